import type { ParleyError } from "./errors.js";

/**
 * The part of the standard WebSocket the client uses: browsers' and Node
 * 22's global WebSocket, and the `ws` package's, all fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket constructor, such as `globalThis.WebSocket` or `ws`'s default export. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** A token, or a function that fetches one; it is called before every connection attempt. */
export type TokenSource = string | (() => string | Promise<string>);

export interface ReconnectOptions {
  /** First delay after a lost connection, in ms (default 250). */
  minDelay?: number;
  /** Largest delay, in ms (default 10000). Delays double from minDelay up to it, each jittered to between half and all of it. */
  maxDelay?: number;
  /** Consecutive failed attempts before the client gives up and closes (default: never). */
  maxAttempts?: number;
}

export interface ClientOptions {
  /** The edge's WebSocket URL (`ws://127.0.0.1:8080/ws`), or several: each attempt takes the next. */
  url: string | string[];
  /** Insecure dev mode only: connect as `?user=NAME`. */
  user?: string;
  /**
   * A JWT, or a function returning one (or a promise of one), called before
   * every connection attempt, so a reconnect (also after close 4001, token
   * expired) uses a fresh token. Sent as `?token=`: browsers cannot set
   * headers on a WebSocket.
   */
  token?: TokenSource;
  /** The WebSocket implementation (default: `globalThis.WebSocket`; on Node 20 pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect after a lost connection (default on); `false`: the client closes instead. */
  reconnect?: ReconnectOptions | false;
  /** Publishes that may wait for a connection, counting those in flight when it dropped (default 100). */
  offlineQueue?: number;
  /** Automatic resends of a publish refused with `unavailable` or `rate_limited` (default 3), same msg_id. */
  publishRetries?: number;
  /** How long a request (sub, history, presence, ping) waits for its reply, in ms (default 15000). */
  requestTimeout?: number;
  /** How long one connection attempt may take, in ms (default 10000). */
  connectTimeout?: number;
  /**
   * Send an app-level ping after this long without a frame from the edge,
   * in ms (default 20000): browsers answer the edge's WebSocket pings but
   * cannot see them, so this is how a dead connection is noticed.
   */
  pingInterval?: number;
  /** Drop the connection (and reconnect) after this long without any frame, in ms (default 50000). */
  readTimeout?: number;
  /** Prefix of generated msg_ids (default "js-"); ids are prefix + 22 random characters, at most 64 in all. */
  msgIdPrefix?: string;
}

/** A message push (`op: "msg"`), also the elements of a history reply. */
export interface Message {
  /** The room, for room messages. */
  room?: string;
  /** The addressee, for direct messages. */
  to?: string;
  /** The stream sequence: unique, increasing within a room (not contiguous). */
  seq: number;
  /** The publisher's id, when it gave one. */
  msgId?: string;
  /** The publisher, when known. */
  from?: string;
  /** When the stream stored it, Unix milliseconds. */
  ts: number;
  /** The published JSON value. */
  data: unknown;
}

export interface PubAck {
  /** The stored message's seq (the original's, for a duplicate). */
  seq: number;
  /** True when the edge had already stored this msg_id: nothing was stored twice. */
  dup: boolean;
  /** The msg_id sent (generated unless given). */
  msgId: string;
}

export interface PublishOptions {
  /** The dedup id (1-64 printable ASCII characters, no spaces); generated when absent. */
  msgId?: string;
  /** Gives up on the publish: it leaves the queue (if it was already sent it may still be stored). */
  signal?: AbortSignal;
}

export type PublishTarget = string | { room: string } | { to: string };

export interface SubscribeOptions {
  /** Resume: every message after this seq, then live. */
  since?: number;
  /** The room's n latest messages, then live. */
  last?: number;
}

export interface HistoryOptions {
  /** Messages with a seq below this (default: the newest). */
  before?: number;
  /** How many (default: the edge's, 50; at most 500). */
  limit?: number;
}

export interface HistoryResult {
  /** Oldest first. */
  messages: Message[];
  /** Set when the reply was cut or may have skipped messages (see docs/protocol.md, history). */
  reason?: string;
}

export interface PresenceEvent {
  room: string;
  user: string;
}

/** A resume the edge could not make whole (`recovered: false`). */
export interface LostEvent {
  room: string;
  /** The position the client resumed from. */
  since: number;
  /** The room's newest seq when the resume started. */
  seq: number;
  /** The edge's explanation: which messages left the stream, or that it was reset. */
  reason: string;
  /** The stream was reset (recreated): the room's position became `seq`. */
  reset: boolean;
}

export type ConnectionState = "idle" | "connecting" | "connected" | "disconnected" | "closed";

export interface ClientEvents {
  /** A connection attempt starts. */
  connecting: { attempt: number; url: string };
  /** The first connection is up. */
  connected: { url: string };
  /** The connection dropped; `willReconnect` says whether the client tries again. */
  disconnected: { code: number; reason: string; willReconnect: boolean };
  /** A later connection is up, every room was resubscribed and queued publishes were sent. */
  reconnected: { url: string; rooms: number };
  /** A resume came back with a hole (see LostEvent). */
  lost: LostEvent;
  /** A resubscription was refused (forbidden, bad_request): the room is gone. */
  unsubscribed: { room: string; reason: string };
  /** Every message: rooms, direct messages, broadcasts, in order, each once. */
  message: Message;
  join: PresenceEvent;
  leave: PresenceEvent;
  /** Something went wrong that did not end the client (a token function failed, an undecodable line, a stray error reply). */
  error: ParleyError;
  /** The client ended: close(), or a failure it cannot recover from (error set). */
  closed: { error?: ParleyError };
}

export interface SubscriptionEvents {
  message: Message;
  join: PresenceEvent;
  leave: PresenceEvent;
  lost: LostEvent;
  /** The subscription ended: unsubscribe(), a refused resubscription, or the client closed. */
  ended: { reason: string };
}
