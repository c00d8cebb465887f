/**
 * An unbounded queue read as an async iterator. Messages are never dropped
 * (that would be a loss the application cannot see), so a consumer that
 * stops reading holds them in memory: end the loop (break) or call
 * return() to let them go.
 */
export class Channel<T> implements AsyncIterableIterator<T> {
  readonly #items: T[] = [];
  readonly #readers: Array<{ resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }> = [];
  #done = false;
  #error: unknown = undefined;
  readonly #onEnd: () => void;

  constructor(onEnd: () => void) {
    this.#onEnd = onEnd;
  }

  /** @internal */
  push(v: T): void {
    if (this.#done) return;
    const r = this.#readers.shift();
    if (r) r.resolve({ value: v, done: false });
    else this.#items.push(v);
  }

  /**
   * @internal Ends the iteration once the buffered values are read; with an
   * error, the read after them rejects with it.
   */
  end(error?: unknown): void {
    if (this.#done) return;
    this.#done = true;
    this.#error = error;
    this.#onEnd();
    for (const r of this.#readers.splice(0)) {
      if (error === undefined) r.resolve({ value: undefined, done: true });
      else r.reject(error);
    }
  }

  next(): Promise<IteratorResult<T>> {
    if (this.#items.length > 0) return Promise.resolve({ value: this.#items.shift() as T, done: false });
    if (this.#done) {
      const err = this.#error;
      this.#error = undefined; // reported once; later reads just end
      return err === undefined ? Promise.resolve({ value: undefined, done: true }) : Promise.reject(err);
    }
    return new Promise((resolve, reject) => this.#readers.push({ resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    this.#items.length = 0;
    this.#error = undefined;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
