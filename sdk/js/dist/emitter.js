/**
 * A small typed event emitter (no dependency, same in browsers and Node);
 * E maps each event's name to its payload.
 * A listener that throws does not stop delivery to the others, nor the
 * client: the error is rethrown from a microtask, where the platform
 * reports it (the console in a browser, an uncaught exception in Node).
 */
export class Emitter {
    #listeners = new Map();
    /** Adds a listener; the returned function removes it. */
    on(name, fn) {
        let set = this.#listeners.get(name);
        if (!set) {
            set = new Set();
            this.#listeners.set(name, set);
        }
        set.add(fn);
        return () => this.off(name, fn);
    }
    /** Adds a listener called at most once. */
    once(name, fn) {
        const off = this.on(name, (ev) => {
            off();
            fn(ev);
        });
        return off;
    }
    off(name, fn) {
        this.#listeners.get(name)?.delete(fn);
    }
    /** @internal */
    emit(name, ev) {
        const set = this.#listeners.get(name);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(ev);
            }
            catch (err) {
                queueMicrotask(() => {
                    throw err;
                });
            }
        }
    }
}
