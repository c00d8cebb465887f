/**
 * A small typed event emitter (no dependency, same in browsers and Node);
 * E maps each event's name to its payload.
 * A listener that throws does not stop delivery to the others, nor the
 * client: the error is rethrown from a microtask, where the platform
 * reports it (the console in a browser, an uncaught exception in Node).
 */
export class Emitter<E extends object> {
  readonly #listeners = new Map<keyof E, Set<(ev: never) => void>>();

  /** Adds a listener; the returned function removes it. */
  on<K extends keyof E>(name: K, fn: (ev: E[K]) => void): () => void {
    let set = this.#listeners.get(name);
    if (!set) {
      set = new Set();
      this.#listeners.set(name, set);
    }
    set.add(fn as (ev: never) => void);
    return () => this.off(name, fn);
  }

  /** Adds a listener called at most once. */
  once<K extends keyof E>(name: K, fn: (ev: E[K]) => void): () => void {
    const off = this.on(name, (ev) => {
      off();
      fn(ev);
    });
    return off;
  }

  off<K extends keyof E>(name: K, fn: (ev: E[K]) => void): void {
    this.#listeners.get(name)?.delete(fn as (ev: never) => void);
  }

  /** @internal */
  emit<K extends keyof E>(name: K, ev: E[K]): void {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as (ev: E[K]) => void)(ev);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
