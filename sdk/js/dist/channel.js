/**
 * An unbounded queue read as an async iterator. Messages are never dropped
 * (that would be a loss the application cannot see), so a consumer that
 * stops reading holds them in memory: end the loop (break) or call
 * return() to let them go.
 */
export class Channel {
    #items = [];
    #readers = [];
    #done = false;
    #error = undefined;
    #onEnd;
    constructor(onEnd) {
        this.#onEnd = onEnd;
    }
    /** @internal */
    push(v) {
        if (this.#done)
            return;
        const r = this.#readers.shift();
        if (r)
            r.resolve({ value: v, done: false });
        else
            this.#items.push(v);
    }
    /**
     * @internal Ends the iteration once the buffered values are read; with an
     * error, the read after them rejects with it.
     */
    end(error) {
        if (this.#done)
            return;
        this.#done = true;
        this.#error = error;
        this.#onEnd();
        for (const r of this.#readers.splice(0)) {
            if (error === undefined)
                r.resolve({ value: undefined, done: true });
            else
                r.reject(error);
        }
    }
    next() {
        if (this.#items.length > 0)
            return Promise.resolve({ value: this.#items.shift(), done: false });
        if (this.#done) {
            const err = this.#error;
            this.#error = undefined; // reported once; later reads just end
            return err === undefined ? Promise.resolve({ value: undefined, done: true }) : Promise.reject(err);
        }
        return new Promise((resolve, reject) => this.#readers.push({ resolve, reject }));
    }
    return() {
        this.#items.length = 0;
        this.#error = undefined;
        this.end();
        return Promise.resolve({ value: undefined, done: true });
    }
    [Symbol.asyncIterator]() {
        return this;
    }
}
