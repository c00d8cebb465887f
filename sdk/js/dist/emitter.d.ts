/**
 * A small typed event emitter (no dependency, same in browsers and Node);
 * E maps each event's name to its payload.
 * A listener that throws does not stop delivery to the others, nor the
 * client: the error is rethrown from a microtask, where the platform
 * reports it (the console in a browser, an uncaught exception in Node).
 */
export declare class Emitter<E extends object> {
    #private;
    /** Adds a listener; the returned function removes it. */
    on<K extends keyof E>(name: K, fn: (ev: E[K]) => void): () => void;
    /** Adds a listener called at most once. */
    once<K extends keyof E>(name: K, fn: (ev: E[K]) => void): () => void;
    off<K extends keyof E>(name: K, fn: (ev: E[K]) => void): void;
}
