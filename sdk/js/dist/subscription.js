import { Channel } from "./channel.js";
import { Emitter } from "./emitter.js";
import { ParleyError } from "./errors.js";
/**
 * One room the client is subscribed to. It outlives connections: after a
 * reconnect the client resubscribes it from `position`, so its messages
 * arrive in seq order, each once, whatever happened to the connection.
 *
 * Listeners and iterators see the messages delivered from the moment they
 * are attached; attach them right after `subscribe()` returns (before any
 * `await`) to see every one.
 */
export class Subscription extends Emitter {
    room;
    /** Settles with the edge's answer to the first `sub`; rejects if it is refused or the client closes first. */
    ready;
    #owner;
    #resolve;
    #reject;
    #settled = false;
    #active = true;
    #channels = new Set();
    /** @internal */
    constructor(room, owner) {
        super();
        this.room = room;
        this.#owner = owner;
        this.ready = new Promise((resolve, reject) => {
            this.#resolve = resolve;
            this.#reject = reject;
        });
        // A refusal is also reported as "ended" and to iterators: an
        // application that never awaits ready must not get an unhandled
        // rejection for it.
        this.ready.catch(() => { });
    }
    /** The seq of the last message of the room handed to the application: where a resume starts. */
    get position() {
        return this.#owner.position(this);
    }
    /** False once unsubscribed, refused, or the client closed. */
    get active() {
        return this.#active;
    }
    /** An iterator of the room's messages from now on; it ends with the subscription. */
    messages() {
        const ch = new Channel(() => this.#channels.delete(ch));
        if (this.#active)
            this.#channels.add(ch);
        else
            ch.end();
        return ch;
    }
    [Symbol.asyncIterator]() {
        return this.messages();
    }
    /** Stops the room's messages. Nothing more is delivered once it is called. */
    unsubscribe() {
        return this.#owner.unsubscribe(this);
    }
    /** @internal */
    _settle(r) {
        if (this.#settled)
            return;
        this.#settled = true;
        this.#resolve(r);
    }
    /** @internal */
    _deliver(m) {
        this.emit("message", m);
        for (const ch of this.#channels)
            ch.push(m);
    }
    /** @internal */
    _end(reason, error) {
        if (!this.#active)
            return;
        this.#active = false;
        if (!this.#settled) {
            this.#settled = true;
            this.#reject(error ?? new ParleyError("closed", `subscription to ${this.room} ended before the edge answered: ${reason}`));
        }
        for (const ch of [...this.#channels])
            ch.end(error);
        this.emit("ended", { reason });
    }
}
