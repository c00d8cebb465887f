/**
 * An unbounded queue read as an async iterator. Messages are never dropped
 * (that would be a loss the application cannot see), so a consumer that
 * stops reading holds them in memory: end the loop (break) or call
 * return() to let them go.
 */
export declare class Channel<T> implements AsyncIterableIterator<T> {
    #private;
    constructor(onEnd: () => void);
    next(): Promise<IteratorResult<T>>;
    return(): Promise<IteratorResult<T>>;
    [Symbol.asyncIterator](): AsyncIterableIterator<T>;
}
