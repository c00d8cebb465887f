import { Emitter } from "./emitter.js";
import type { Message, SubscriptionEvents } from "./types.js";
/** What the edge answered to a subscription's first `sub`. */
export interface SubscribeResult {
    room: string;
    /** The room's newest seq when the subscription started. */
    seq: number;
    /** For a sub with since or last: whether every message asked for follows. */
    recovered?: boolean;
    /** Why not, when recovered is false. */
    reason?: string;
}
/** The client side of a subscription, kept by ParleyClient. */
export interface SubscriptionOwner {
    position(sub: Subscription): number;
    unsubscribe(sub: Subscription): Promise<void>;
}
/**
 * One room the client is subscribed to. It outlives connections: after a
 * reconnect the client resubscribes it from `position`, so its messages
 * arrive in seq order, each once, whatever happened to the connection.
 *
 * Listeners and iterators see the messages delivered from the moment they
 * are attached; attach them right after `subscribe()` returns (before any
 * `await`) to see every one.
 */
export declare class Subscription extends Emitter<SubscriptionEvents> {
    #private;
    readonly room: string;
    /** Settles with the edge's answer to the first `sub`; rejects if it is refused or the client closes first. */
    readonly ready: Promise<SubscribeResult>;
    /** The seq of the last message of the room handed to the application: where a resume starts. */
    get position(): number;
    /** False once unsubscribed, refused, or the client closed. */
    get active(): boolean;
    /** An iterator of the room's messages from now on; it ends with the subscription. */
    messages(): AsyncIterableIterator<Message>;
    [Symbol.asyncIterator](): AsyncIterableIterator<Message>;
    /** Stops the room's messages. Nothing more is delivered once it is called. */
    unsubscribe(): Promise<void>;
}
