import { Channel } from "./channel.js";
import { Emitter } from "./emitter.js";
import { ParleyError } from "./errors.js";
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
export class Subscription extends Emitter<SubscriptionEvents> {
  readonly room: string;
  /** Settles with the edge's answer to the first `sub`; rejects if it is refused or the client closes first. */
  readonly ready: Promise<SubscribeResult>;

  #owner: SubscriptionOwner;
  #resolve!: (r: SubscribeResult) => void;
  #reject!: (e: ParleyError) => void;
  #settled = false;
  #active = true;
  readonly #channels = new Set<Channel<Message>>();

  /** @internal */
  constructor(room: string, owner: SubscriptionOwner) {
    super();
    this.room = room;
    this.#owner = owner;
    this.ready = new Promise<SubscribeResult>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // A refusal is also reported as "ended" and to iterators: an
    // application that never awaits ready must not get an unhandled
    // rejection for it.
    this.ready.catch(() => {});
  }

  /** The seq of the last message of the room handed to the application: where a resume starts. */
  get position(): number {
    return this.#owner.position(this);
  }

  /** False once unsubscribed, refused, or the client closed. */
  get active(): boolean {
    return this.#active;
  }

  /** An iterator of the room's messages from now on; it ends with the subscription. */
  messages(): AsyncIterableIterator<Message> {
    const ch: Channel<Message> = new Channel(() => this.#channels.delete(ch));
    if (this.#active) this.#channels.add(ch);
    else ch.end();
    return ch;
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Message> {
    return this.messages();
  }

  /** Stops the room's messages. Nothing more is delivered once it is called. */
  unsubscribe(): Promise<void> {
    return this.#owner.unsubscribe(this);
  }

  /** @internal */
  _settle(r: SubscribeResult): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#resolve(r);
  }

  /** @internal */
  _deliver(m: Message): void {
    this.emit("message", m);
    for (const ch of this.#channels) ch.push(m);
  }

  /** @internal */
  _end(reason: string, error?: ParleyError): void {
    if (!this.#active) return;
    this.#active = false;
    if (!this.#settled) {
      this.#settled = true;
      this.#reject(error ?? new ParleyError("closed", `subscription to ${this.room} ended before the edge answered: ${reason}`));
    }
    for (const ch of [...this.#channels]) ch.end(error);
    this.emit("ended", { reason });
  }
}
