import { Emitter } from "./emitter.js";
import { Subscription } from "./subscription.js";
import type { ClientEvents, ClientOptions, ConnectionState, HistoryOptions, HistoryResult, Message, PubAck, PublishOptions, PublishTarget, SubscribeOptions } from "./types.js";
/**
 * A session with Parley edges. It reconnects by itself, resubscribes every
 * room from the last seq it handed to the application and resends
 * publishes that were not acknowledged with their msg_id, so the
 * application sees every message once, in order, and no publish is stored
 * twice.
 */
export declare class ParleyClient extends Emitter<ClientEvents> {
    #private;
    constructor(opts: ClientOptions);
    /** Where the client is: idle (before connect), connecting, connected, disconnected (reconnecting), closed. */
    get state(): ConnectionState;
    /**
     * Room messages the edge sent at or below a seq already handed to the
     * application; they were dropped. Nonzero means overlapping resumes (or
     * an edge breaking its promise), never that the application saw one twice.
     */
    get duplicates(): number;
    /** Publishes waiting for a connection or an ack. */
    get queuedPublishes(): number;
    /**
     * Starts the session; resolves when the first connection is up. Failed
     * attempts are retried with backoff over the URLs (with `reconnect:
     * false`, each URL is tried once, then it rejects).
     */
    connect(): Promise<void>;
    /** Ends the session: requests, queued publishes and iterators end with a `closed` error. */
    close(): void;
    /** An iterator of every message (rooms, direct messages, broadcasts) from now on; it ends when the client closes. */
    messages(): AsyncIterableIterator<Message>;
    /**
     * Subscribes to a room: plain (messages from now on), `{ since }` (every
     * message after that seq, then live) or `{ last }` (the n latest, then
     * live). Returns at once; the subscription is made as soon as the client
     * is connected and is kept across reconnects. `ready` settles with the
     * edge's answer.
     */
    subscribe(room: string, opts?: SubscribeOptions): Subscription;
    /**
     * Publishes data (any JSON value) to a room (`"lobby"` or `{ room }`) or
     * as a direct message (`{ to: "bob" }`). A msg_id is generated unless
     * given, and every resend (after a lost connection, or an `unavailable`)
     * reuses it, so the edge stores the message once. While the client is
     * not connected the publish waits in a bounded queue (`offlineQueue`);
     * when that is full it rejects at once with `queue_full`.
     */
    publish(target: PublishTarget, data: unknown, opts?: PublishOptions): Promise<PubAck>;
    /** The newest `limit` messages of a room below `before`, oldest first (see docs/protocol.md, history). */
    history(room: string, opts?: HistoryOptions): Promise<HistoryResult>;
    /** The users present in a room, in name order (at most 1000; reason says when there are more). */
    presence(room: string): Promise<{
        users: string[];
        reason?: string;
    }>;
    /** An application-level round trip. */
    ping(): Promise<void>;
}
