import { Channel } from "./channel.js";
import { Emitter } from "./emitter.js";
import { ParleyError } from "./errors.js";
import { Subscription } from "./subscription.js";
const OPEN = 1;
// Close codes of docs/protocol.md ("Close codes").
const CLOSE_TOKEN_EXPIRED = 4001;
const CLOSE_SHUTTING_DOWN = 4003;
// Closes after which the same client would only be closed again: a
// protocol error, text that is not UTF-8, an oversize frame, a flood.
const FATAL_CLOSES = new Set([1002, 1007, 1009, 4004]);
// Room and user names (docs/protocol.md, "Names") and msg_id's form.
const NAME = /^[A-Za-z0-9_-]{1,128}$/;
const MSG_ID = /^[\x21-\x7e]{1,64}$/;
/**
 * A session with Parley edges. It reconnects by itself, resubscribes every
 * room from the last seq it handed to the application and resends
 * publishes that were not acknowledged with their msg_id, so the
 * application sees every message once, in order, and no publish is stored
 * twice.
 */
export class ParleyClient extends Emitter {
    #urls;
    #at = 0;
    #WS;
    #user;
    #token;
    #reconnect;
    #minDelay;
    #maxDelay;
    #maxAttempts;
    #offlineQueue;
    #publishRetries;
    #requestTimeout;
    #connectTimeout;
    #pingInterval;
    #readTimeout;
    #msgIdPrefix;
    #state = "idle";
    #conn;
    #everConnected = false;
    #failures = 0;
    #delay;
    #dialTimer;
    #nextId = 0;
    #duplicates = 0;
    #closeError;
    #pending = new Map();
    #waiting = [];
    #rooms = new Map();
    #pubs = new Set();
    #channels = new Set();
    #connectWaiters = [];
    #owner;
    constructor(opts) {
        super();
        const urls = Array.isArray(opts.url) ? [...opts.url] : [opts.url];
        if (urls.length === 0)
            throw new TypeError("parley: url: give at least one edge URL");
        this.#urls = urls.map((u) => new URL(u).toString());
        const WS = opts.WebSocket ?? globalThis.WebSocket;
        if (!WS) {
            throw new TypeError("parley: no global WebSocket here (Node 20): pass one, e.g. { WebSocket } from the ws package");
        }
        this.#WS = WS;
        if (opts.user !== undefined && !NAME.test(opts.user)) {
            throw new TypeError(`parley: user ${JSON.stringify(opts.user)} is not 1-128 characters of [A-Za-z0-9_-]`);
        }
        this.#user = opts.user;
        this.#token = opts.token;
        this.#reconnect = opts.reconnect !== false;
        const rc = opts.reconnect || {};
        this.#minDelay = positive("reconnect.minDelay", rc.minDelay ?? 250);
        this.#maxDelay = Math.max(this.#minDelay, positive("reconnect.maxDelay", rc.maxDelay ?? 10_000));
        this.#maxAttempts = positive("reconnect.maxAttempts", rc.maxAttempts ?? Infinity);
        this.#offlineQueue = positive("offlineQueue", opts.offlineQueue ?? 100, true);
        this.#publishRetries = positive("publishRetries", opts.publishRetries ?? 3, true);
        this.#requestTimeout = positive("requestTimeout", opts.requestTimeout ?? 15_000);
        this.#connectTimeout = positive("connectTimeout", opts.connectTimeout ?? 10_000);
        this.#pingInterval = positive("pingInterval", opts.pingInterval ?? 20_000);
        this.#readTimeout = positive("readTimeout", opts.readTimeout ?? 50_000);
        if (this.#readTimeout <= this.#pingInterval) {
            throw new TypeError("parley: readTimeout must be longer than pingInterval (a quiet edge answers only the pings)");
        }
        this.#msgIdPrefix = opts.msgIdPrefix ?? "js-";
        if (this.#msgIdPrefix.length > 42 || !/^[\x21-\x7e]*$/.test(this.#msgIdPrefix)) {
            throw new TypeError("parley: msgIdPrefix: at most 42 printable ASCII characters without spaces");
        }
        this.#delay = this.#minDelay;
        this.#owner = {
            position: (sub) => this.#rooms.get(sub.room)?.position ?? 0,
            unsubscribe: (sub) => this.#unsubscribe(sub),
        };
    }
    /** Where the client is: idle (before connect), connecting, connected, disconnected (reconnecting), closed. */
    get state() {
        return this.#state;
    }
    /**
     * Room messages the edge sent at or below a seq already handed to the
     * application; they were dropped. Nonzero means overlapping resumes (or
     * an edge breaking its promise), never that the application saw one twice.
     */
    get duplicates() {
        return this.#duplicates;
    }
    /** Publishes waiting for a connection or an ack. */
    get queuedPublishes() {
        return this.#pubs.size;
    }
    /**
     * Starts the session; resolves when the first connection is up. Failed
     * attempts are retried with backoff over the URLs (with `reconnect:
     * false`, each URL is tried once, then it rejects).
     */
    connect() {
        if (this.#state === "closed")
            return Promise.reject(this.#closedError());
        if (this.#state === "connected")
            return Promise.resolve();
        const p = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
        if (this.#state === "idle") {
            this.#state = "connecting";
            this.#schedule(0);
        }
        return p;
    }
    /** Ends the session: requests, queued publishes and iterators end with a `closed` error. */
    close() {
        this.#finish(undefined);
    }
    /** An iterator of every message (rooms, direct messages, broadcasts) from now on; it ends when the client closes. */
    messages() {
        const ch = new Channel(() => this.#channels.delete(ch));
        if (this.#state === "closed")
            ch.end(this.#closeError);
        else
            this.#channels.add(ch);
        return ch;
    }
    /**
     * Subscribes to a room: plain (messages from now on), `{ since }` (every
     * message after that seq, then live) or `{ last }` (the n latest, then
     * live). Returns at once; the subscription is made as soon as the client
     * is connected and is kept across reconnects. `ready` settles with the
     * edge's answer.
     */
    subscribe(room, opts = {}) {
        if (!NAME.test(room))
            throw new TypeError(`parley: room ${JSON.stringify(room)} is not 1-128 characters of [A-Za-z0-9_-]`);
        if (opts.since !== undefined && opts.last !== undefined)
            throw new TypeError("parley: subscribe takes since or last, not both");
        if (opts.since !== undefined)
            seqArg("since", opts.since);
        if (opts.last !== undefined && (!Number.isInteger(opts.last) || opts.last <= 0)) {
            throw new TypeError("parley: last must be a positive integer");
        }
        if (this.#state === "closed")
            throw this.#closedError();
        if (this.#rooms.has(room))
            throw new ParleyError("bad_request", `parley: already subscribed to ${room}; unsubscribe first`);
        const sub = new Subscription(room, this.#owner);
        const st = { sub, position: opts.since ?? 0, confirmed: false, first: { ...opts }, lastPending: undefined };
        this.#rooms.set(room, st);
        // Not connected yet: resume() takes it with the other rooms.
        const conn = this.#conn;
        if (conn)
            void this.#subscribeOn(conn, st).then((ok) => ok || this.#drop(conn, `subscribing to ${room} failed`));
        return sub;
    }
    /**
     * Publishes data (any JSON value) to a room (`"lobby"` or `{ room }`) or
     * as a direct message (`{ to: "bob" }`). A msg_id is generated unless
     * given, and every resend (after a lost connection, or an `unavailable`)
     * reuses it, so the edge stores the message once. While the client is
     * not connected the publish waits in a bounded queue (`offlineQueue`);
     * when that is full it rejects at once with `queue_full`.
     */
    publish(target, data, opts = {}) {
        const req = { op: "pub" };
        if (typeof target === "string")
            req.room = target;
        else if ("room" in target)
            req.room = target.room;
        else
            req.to = target.to;
        const name = (req.room ?? req.to);
        if (typeof name !== "string" || !NAME.test(name)) {
            return Promise.reject(new TypeError(`parley: ${JSON.stringify(name)} is not 1-128 characters of [A-Za-z0-9_-]`));
        }
        if (data === undefined)
            return Promise.reject(new TypeError("parley: publish needs data (any JSON value)"));
        const msgId = opts.msgId ?? this.#newMsgId();
        if (!MSG_ID.test(msgId)) {
            return Promise.reject(new TypeError("parley: msgId must be 1-64 printable ASCII characters without spaces"));
        }
        req.msg_id = msgId;
        req.data = data;
        if (this.#state === "closed")
            return Promise.reject(this.#closedError());
        if (opts.signal?.aborted)
            return Promise.reject(new ParleyError("aborted", "publish aborted"));
        const conn = this.#conn;
        if (!conn?.ready && this.#pubs.size >= this.#offlineQueue) {
            return Promise.reject(new ParleyError("queue_full", `parley: ${this.#pubs.size} publishes already wait for a connection (offlineQueue)`));
        }
        return new Promise((resolve, reject) => {
            const p = {
                req,
                msgId,
                resolve,
                reject,
                inFlight: false,
                refusals: 0,
                retryTimer: undefined,
                done: false,
                cleanup: () => { },
            };
            const signal = opts.signal;
            if (signal) {
                const onAbort = () => {
                    if (this.#settlePub(p))
                        p.reject(new ParleyError("aborted", "publish aborted (it may still have been stored if it was sent)"));
                };
                signal.addEventListener("abort", onAbort, { once: true });
                p.cleanup = () => signal.removeEventListener("abort", onAbort);
            }
            this.#pubs.add(p);
            if (conn?.ready)
                this.#sendPub(conn, p);
        });
    }
    /** The newest `limit` messages of a room below `before`, oldest first (see docs/protocol.md, history). */
    async history(room, opts = {}) {
        if (!NAME.test(room))
            throw new TypeError(`parley: room ${JSON.stringify(room)} is not 1-128 characters of [A-Za-z0-9_-]`);
        const req = { op: "history", room };
        if (opts.before !== undefined)
            req.before = seqArg("before", opts.before);
        if (opts.limit !== undefined)
            req.limit = seqArg("limit", opts.limit);
        const r = await this.#request(undefined, req);
        const out = { messages: (r.msgs ?? []).map(toMessage) };
        if (r.reason)
            out.reason = r.reason;
        return out;
    }
    /** The users present in a room, in name order (at most 1000; reason says when there are more). */
    async presence(room) {
        if (!NAME.test(room))
            throw new TypeError(`parley: room ${JSON.stringify(room)} is not 1-128 characters of [A-Za-z0-9_-]`);
        const r = await this.#request(undefined, { op: "presence", room });
        return r.reason ? { users: r.users ?? [], reason: r.reason } : { users: r.users ?? [] };
    }
    /** An application-level round trip. */
    async ping() {
        await this.#request(undefined, { op: "ping" });
    }
    // ---- connections ----
    #schedule(delay) {
        clearTimeout(this.#dialTimer);
        this.#dialTimer = setTimeout(() => void this.#attempt(), delay);
    }
    async #attempt() {
        if (this.#state === "closed")
            return;
        const base = this.#urls[this.#at % this.#urls.length];
        this.emit("connecting", { attempt: this.#failures + 1, url: base });
        let ws;
        try {
            ws = await this.#open(await this.#dialURL(base));
        }
        catch (err) {
            if (!this.#isClosed()) {
                this.#attemptFailed(err instanceof ParleyError ? err : new ParleyError("disconnected", `parley: ${String(err)}`));
            }
            return;
        }
        if (this.#isClosed()) {
            ws.close(1000);
        }
        else if (ws.readyState !== OPEN) {
            // Closed between its open event and now (its close went to #open).
            this.#attemptFailed(new ParleyError("disconnected", `parley: connection to ${base} closed as it opened`));
        }
        else {
            this.#attach(ws, base);
        }
    }
    #attemptFailed(e) {
        this.#failures++;
        if ((!this.#reconnect && this.#failures >= this.#urls.length) || this.#failures >= this.#maxAttempts) {
            this.#finish(new ParleyError("closed", `parley: could not connect after ${this.#failures} attempts: ${e.message}`, e.closeCode));
            return;
        }
        this.#at++;
        this.#schedule(this.#backoff());
    }
    /** The URL of one attempt, with a fresh token (or ?user=). */
    async #dialURL(base) {
        const u = new URL(base);
        if (this.#user !== undefined)
            u.searchParams.set("user", this.#user);
        if (this.#token !== undefined) {
            let tok;
            try {
                tok = typeof this.#token === "function" ? await this.#token() : this.#token;
            }
            catch (err) {
                const e = new ParleyError("unauthorized", `parley: token function failed: ${String(err)}`);
                this.emit("error", e);
                throw e;
            }
            if (typeof tok !== "string" || tok === "")
                throw new ParleyError("unauthorized", "parley: the token function returned no token");
            u.searchParams.set("token", tok);
        }
        return u.toString();
    }
    #open(url) {
        return new Promise((resolve, reject) => {
            let ws;
            try {
                ws = new this.#WS(url);
            }
            catch (err) {
                reject(new ParleyError("disconnected", `parley: cannot open ${redact(url)}: ${String(err)}`));
                return;
            }
            const timer = setTimeout(() => {
                ws.onopen = ws.onclose = null;
                try {
                    ws.close();
                }
                catch {
                    // already closing
                }
                reject(new ParleyError("timeout", `parley: no connection to ${redact(url)} within ${this.#connectTimeout} ms`));
            }, this.#connectTimeout);
            ws.onerror = () => { }; // onclose follows, with the code
            ws.onopen = () => {
                clearTimeout(timer);
                resolve(ws);
            };
            ws.onclose = (ev) => {
                clearTimeout(timer);
                // A browser does not say why an upgrade failed (401, 403 and a
                // refused TCP connection all look like 1006), so every failure is
                // retried with backoff.
                reject(new ParleyError("disconnected", `parley: connection to ${redact(url)} failed (close ${ev.code})`, ev.code));
            };
        });
    }
    #attach(ws, url) {
        const now = Date.now();
        const conn = { ws, url, lastRx: now, lastPing: now, ready: false, timer: undefined };
        this.#conn = conn;
        ws.onmessage = (ev) => {
            if (this.#conn === conn)
                this.#onFrame(conn, ev.data);
        };
        ws.onclose = (ev) => {
            if (this.#conn === conn)
                this.#connectionLost(conn, ev.code, ev.reason);
        };
        ws.onerror = () => { };
        conn.timer = setInterval(() => this.#tick(conn), Math.max(50, Math.min(this.#pingInterval, this.#readTimeout) / 4));
        const first = !this.#everConnected;
        this.#everConnected = true;
        this.#state = "connected";
        if (first)
            this.emit("connected", { url });
        for (const w of this.#connectWaiters.splice(0))
            w.resolve();
        void this.#resume(conn, first);
    }
    /**
     * Brings a new connection up to date: the requests that waited for it,
     * every room from its position, then the queued publishes in the order
     * they were made.
     */
    async #resume(conn, first) {
        for (const p of this.#waiting.splice(0))
            this.#send(conn, p);
        const rooms = [...this.#rooms.values()];
        const ok = await Promise.all(rooms.map((st) => this.#subscribeOn(conn, st)));
        if (this.#conn !== conn)
            return; // lost again: the next connection starts over
        if (ok.includes(false)) {
            this.#drop(conn, "resubscribing failed; trying again");
            return;
        }
        conn.ready = true;
        this.#delay = this.#minDelay;
        this.#failures = 0;
        for (const p of this.#pubs) {
            if (!p.inFlight)
                this.#sendPub(conn, p);
        }
        if (!first)
            this.emit("reconnected", { url: conn.url, rooms: rooms.length });
    }
    /**
     * Subscribes one room on conn: its first sub as asked, later ones from its
     * position. False: a transient failure (the connection should be
     * replaced); true: subscribed, or refused for good (the room is dropped).
     */
    async #subscribeOn(conn, st) {
        for (let attempt = 1;; attempt++) {
            if (this.#conn !== conn || this.#rooms.get(st.sub.room) !== st)
                return true;
            try {
                await this.#subscribeOnce(conn, st);
                return true;
            }
            catch (err) {
                const e = err;
                if (e.code === "forbidden" || e.code === "bad_request") {
                    this.#endRoom(st, e.message, e);
                    this.emit("unsubscribed", { room: st.sub.room, reason: e.message });
                    return true;
                }
                if (e.code === "disconnected" || e.code === "closed")
                    return true; // the next connection retries
                if (e.code === "timeout" || attempt >= 3)
                    return false;
                // unavailable (e.g. every replay slot of the edge busy), rate_limited:
                // the same connection may do better in a moment.
                await sleep(jitter(this.#minDelay * 2 ** attempt));
            }
        }
    }
    async #subscribeOnce(conn, st) {
        const room = st.sub.room;
        const lp = st.lastPending;
        if (lp) {
            // A `last` whose replay had not started when the connection dropped:
            // fetch those newest messages up to the old reply's seq, then resume
            // after it. A resume from 0 would replay the whole room instead.
            const h = await this.#request(conn, { op: "history", room, before: lp.seq + 1, limit: lp.n });
            if (this.#rooms.get(room) !== st || st.lastPending !== lp)
                return;
            for (const w of h.msgs ?? [])
                this.#deliverRoom(st, toMessage(w));
            st.lastPending = undefined;
            st.position = Math.max(st.position, lp.seq);
        }
        const req = { op: "sub", room };
        const first = !st.confirmed;
        if (!first)
            req.since = st.position;
        else if (st.first.since !== undefined)
            req.since = st.first.since;
        else if (st.first.last !== undefined)
            req.last = st.first.last;
        const since = req.since;
        const r = await this.#request(conn, req, (rep) => {
            if (rep.error)
                return;
            if (this.#rooms.get(room) !== st) {
                // Unsubscribed while this sub was in flight: undo it at the edge.
                this.#request(conn, { op: "unsub", room }).catch(() => { });
                return;
            }
            // This runs before any message of the room on this connection.
            const seq = rep.seq ?? 0;
            st.confirmed = true;
            if (since !== undefined) {
                // After a resume the reply's seq is where the replay ends: the
                // position stays since and advances with the replayed messages,
                // except after a stream reset (docs/protocol.md, sub with since).
                if (isReset(since, rep))
                    st.position = seq;
            }
            else if (req.last !== undefined) {
                st.position = 0;
                st.lastPending = seq > 0 ? { n: req.last, seq } : undefined;
            }
            else {
                st.position = seq;
            }
        });
        if (this.#rooms.get(room) !== st)
            return;
        const result = { room, seq: r.seq ?? 0 };
        if (r.recovered !== undefined)
            result.recovered = r.recovered;
        if (r.reason)
            result.reason = r.reason;
        if (first)
            st.sub._settle(result);
        if (since !== undefined && r.recovered === false) {
            const ev = { room, since, seq: r.seq ?? 0, reason: r.reason ?? "", reset: isReset(since, r) };
            st.sub.emit("lost", ev);
            this.emit("lost", ev);
        }
    }
    async #unsubscribe(sub) {
        const st = this.#rooms.get(sub.room);
        if (!st || st.sub !== sub)
            return;
        this.#endRoom(st, "unsubscribed");
        const conn = this.#conn;
        // Unconfirmed: the sub's reply (if it comes) sends the unsub itself.
        if (!conn || !st.confirmed)
            return;
        try {
            await this.#request(conn, { op: "unsub", room: sub.room });
        }
        catch (err) {
            // not_found: never subscribed on this connection; disconnected: the
            // next connection does not resubscribe it. Either way it is gone.
            const code = err.code;
            if (code !== "not_found" && code !== "disconnected" && code !== "closed")
                throw err;
        }
    }
    #endRoom(st, reason, error) {
        if (this.#rooms.get(st.sub.room) === st)
            this.#rooms.delete(st.sub.room);
        st.sub._end(reason, error);
    }
    #onFrame(conn, data) {
        conn.lastRx = Date.now();
        let text;
        if (typeof data === "string")
            text = data;
        else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data))
            text = new TextDecoder().decode(data);
        else
            return; // the edge sends text only
        for (const line of text.split("\n")) {
            if (line.trim() === "")
                continue;
            let w;
            try {
                w = JSON.parse(line);
            }
            catch {
                this.emit("error", new ParleyError("internal", `parley: undecodable line from the edge: ${line.slice(0, 200)}`));
                continue;
            }
            if (w === null || typeof w !== "object")
                continue;
            this.#handle(w);
            if (this.#conn !== conn)
                return; // a listener closed the client
        }
    }
    #handle(w) {
        switch (w.op) {
            case "msg":
                this.#deliver(toMessage(w));
                return;
            case "join":
            case "leave": {
                const ev = { room: w.room ?? "", user: w.user ?? "" };
                this.#rooms.get(ev.room)?.sub.emit(w.op, ev);
                this.emit(w.op, ev);
                return;
            }
            case undefined:
            case "":
                this.#reply(w);
                return;
        }
        // A push of a later protocol version: ignored.
    }
    #reply(w) {
        const p = typeof w.id === "number" && w.id !== 0 ? this.#pending.get(w.id) : undefined;
        if (!p) {
            // Replies to id-less pings, and errors about frames the edge could
            // not parse (which have no id).
            if (w.error)
                this.emit("error", new ParleyError(w.error.code, w.error.message));
            return;
        }
        this.#pending.delete(w.id);
        clearTimeout(p.timer);
        p.onReply?.(w);
        if (w.error)
            p.reject(new ParleyError(w.error.code, w.error.message));
        else
            p.resolve(w);
    }
    #deliver(m) {
        if (m.room === undefined) {
            this.#emitMessage(m); // direct messages and broadcasts are not resumed
            return;
        }
        const st = this.#rooms.get(m.room);
        if (st?.confirmed)
            this.#deliverRoom(st, m);
    }
    /** Hands a room message to the application, at most once and in seq order. */
    #deliverRoom(st, m) {
        if (m.seq <= st.position) {
            this.#duplicates++;
            return;
        }
        st.position = m.seq;
        st.lastPending = undefined;
        st.sub._deliver(m);
        this.#emitMessage(m);
    }
    #emitMessage(m) {
        this.emit("message", m);
        for (const ch of this.#channels)
            ch.push(m);
    }
    #tick(conn) {
        if (this.#conn !== conn)
            return;
        const now = Date.now();
        const idle = now - conn.lastRx;
        if (idle >= this.#readTimeout) {
            this.#drop(conn, `nothing from the edge for ${idle} ms`);
            return;
        }
        if (idle >= this.#pingInterval && now - conn.lastPing >= this.#pingInterval) {
            conn.lastPing = now;
            this.#write(conn, '{"op":"ping"}');
        }
    }
    /** Gives up on conn at once (its close may never complete on a dead network). */
    #drop(conn, reason) {
        if (this.#conn !== conn)
            return;
        try {
            conn.ws.close(1000, reason.slice(0, 120));
        }
        catch {
            // already closing
        }
        this.#connectionLost(conn, 1006, reason);
    }
    #connectionLost(conn, code, reason) {
        if (this.#conn !== conn)
            return;
        this.#conn = undefined;
        clearInterval(conn.timer);
        conn.ws.onmessage = conn.ws.onclose = null;
        this.#state = "disconnected";
        const lost = [...this.#pending.values()];
        this.#pending.clear();
        const err = new ParleyError("disconnected", `parley: connection lost (${code} ${reason})`, code);
        for (const p of lost) {
            clearTimeout(p.timer);
            p.reject(err); // publishes go back to the queue (sendPub)
        }
        const fatal = !this.#reconnect ||
            FATAL_CLOSES.has(code) ||
            (code === CLOSE_TOKEN_EXPIRED && typeof this.#token !== "function");
        this.emit("disconnected", { code, reason, willReconnect: !fatal });
        if (fatal) {
            this.#finish(new ParleyError("closed", `parley: the edge closed the connection: ${code} ${reason}`, code));
            return;
        }
        this.#at++;
        // A draining edge (4003) asks to reconnect elsewhere right away; an
        // expired token is replaced by the token function at once.
        const now = code === CLOSE_SHUTTING_DOWN || code === CLOSE_TOKEN_EXPIRED;
        this.#schedule(now ? 0 : this.#backoff());
    }
    /** The next jittered delay, doubling up to maxDelay. */
    #backoff() {
        const d = this.#delay;
        this.#delay = Math.min(2 * d, this.#maxDelay);
        return jitter(d);
    }
    #finish(error) {
        if (this.#state === "closed")
            return;
        this.#state = "closed";
        this.#closeError = error;
        clearTimeout(this.#dialTimer);
        const conn = this.#conn;
        this.#conn = undefined;
        if (conn) {
            clearInterval(conn.timer);
            conn.ws.onmessage = conn.ws.onclose = null;
            try {
                conn.ws.close(1000);
            }
            catch {
                // already closing
            }
        }
        const err = this.#closedError();
        for (const p of [...this.#pending.values(), ...this.#waiting.splice(0)]) {
            clearTimeout(p.timer);
            p.reject(err);
        }
        this.#pending.clear();
        for (const p of [...this.#pubs]) {
            if (this.#settlePub(p))
                p.reject(err);
        }
        for (const st of [...this.#rooms.values()])
            this.#endRoom(st, "client closed", error);
        for (const ch of [...this.#channels])
            ch.end(error);
        for (const w of this.#connectWaiters.splice(0))
            w.reject(err);
        this.emit("closed", error ? { error } : {});
    }
    // A method, not a comparison: the state changes across awaits, which
    // TypeScript's narrowing does not see.
    #isClosed() {
        return this.#state === "closed";
    }
    #closedError() {
        return this.#closeError ?? new ParleyError("closed", "parley: client closed");
    }
    // ---- requests ----
    /**
     * Sends a request on conn (undefined: the current connection, or the
     * next one if there is none yet) and settles with its reply; an error
     * reply rejects. timeout 0: no deadline (publishes, which a lost
     * connection requeues instead).
     */
    #request(conn, req, onReply, timeout = this.#requestTimeout) {
        return new Promise((resolve, reject) => {
            if (this.#state === "closed") {
                reject(this.#closedError());
                return;
            }
            const p = { resolve, reject, onReply, timer: undefined, req, conn: undefined };
            if (timeout > 0) {
                p.timer = setTimeout(() => this.#timedOut(p), timeout);
            }
            if (conn && conn !== this.#conn) {
                clearTimeout(p.timer);
                reject(new ParleyError("disconnected", "parley: connection lost"));
            }
            else if (conn ?? this.#conn) {
                this.#send((conn ?? this.#conn), p);
            }
            else {
                this.#waiting.push(p);
            }
        });
    }
    #timedOut(p) {
        const waiting = this.#waiting.indexOf(p);
        if (waiting >= 0)
            this.#waiting.splice(waiting, 1);
        for (const [id, q] of this.#pending) {
            if (q === p)
                this.#pending.delete(id);
        }
        p.reject(new ParleyError("timeout", `parley: no reply to ${p.req.op} within ${this.#requestTimeout} ms`));
    }
    #send(conn, p) {
        const id = ++this.#nextId;
        p.conn = conn;
        this.#pending.set(id, p);
        if (!this.#write(conn, JSON.stringify({ id, ...p.req }))) {
            this.#pending.delete(id);
            clearTimeout(p.timer);
            p.reject(new ParleyError("disconnected", "parley: connection lost"));
        }
    }
    #write(conn, frame) {
        if (conn.ws.readyState !== OPEN)
            return false;
        try {
            conn.ws.send(frame);
            return true;
        }
        catch {
            return false;
        }
    }
    #sendPub(conn, p) {
        clearTimeout(p.retryTimer);
        p.retryTimer = undefined;
        p.inFlight = true;
        this.#request(conn, p.req, undefined, 0).then((r) => {
            if (this.#settlePub(p))
                p.resolve({ seq: r.seq ?? 0, dup: r.dup === true, msgId: p.msgId });
        }, (e) => {
            if (p.done)
                return;
            p.inFlight = false;
            // Lost with the connection: it stays queued and goes out again,
            // same msg_id, once the next connection is ready.
            if (e.code === "disconnected")
                return;
            if ((e.code === "unavailable" || e.code === "rate_limited") && p.refusals < this.#publishRetries) {
                p.refusals++;
                p.retryTimer = setTimeout(() => {
                    p.retryTimer = undefined;
                    const c = this.#conn;
                    if (!p.done && !p.inFlight && c?.ready)
                        this.#sendPub(c, p);
                }, jitter(this.#minDelay * 2 ** p.refusals));
                return;
            }
            if (this.#settlePub(p))
                p.reject(e);
        });
    }
    /** Takes p out of the queue; false if it had already been settled. */
    #settlePub(p) {
        if (p.done)
            return false;
        p.done = true;
        clearTimeout(p.retryTimer);
        p.cleanup();
        this.#pubs.delete(p);
        return true;
    }
    #newMsgId() {
        const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const bytes = new Uint8Array(22);
        const c = globalThis.crypto;
        if (c)
            c.getRandomValues(bytes);
        else
            for (let i = 0; i < bytes.length; i++)
                bytes[i] = Math.floor(Math.random() * 256);
        let s = this.#msgIdPrefix;
        for (const b of bytes)
            s += alphabet[b & 63];
        return s;
    }
}
/**
 * Whether a resume's reply reports a stream reset: recovered:false with
 * the room's newest seq below since. The room's new messages then have
 * lower seqs than those seen before, so the position must drop to the
 * reply's seq or they would be discarded as old.
 */
function isReset(since, r) {
    return r.recovered === false && typeof r.seq === "number" && r.seq < since;
}
function toMessage(w) {
    const m = { seq: w.seq ?? 0, ts: w.ts ?? 0, data: w.data };
    if (w.room !== undefined)
        m.room = w.room;
    if (w.to !== undefined)
        m.to = w.to;
    if (w.msg_id !== undefined)
        m.msgId = w.msg_id;
    if (w.from !== undefined)
        m.from = w.from;
    return m;
}
/** Between half and all of d, so that clients dropped together do not come back together. */
function jitter(d) {
    return d / 2 + Math.random() * (d / 2);
}
function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}
function positive(name, v, zeroOK = false) {
    if (typeof v !== "number" || Number.isNaN(v) || v < 0 || (v === 0 && !zeroOK)) {
        throw new TypeError(`parley: ${name} must be a ${zeroOK ? "non-negative" : "positive"} number`);
    }
    return v;
}
function seqArg(name, v) {
    if (!Number.isSafeInteger(v) || v < 0)
        throw new TypeError(`parley: ${name} must be a non-negative integer`);
    return v;
}
/** A URL without its query: tokens stay out of errors and logs. */
function redact(url) {
    const i = url.indexOf("?");
    return i < 0 ? url : url.slice(0, i);
}
