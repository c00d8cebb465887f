/**
 * Error codes: the edge's (docs/protocol.md, "Errors") and the SDK's own.
 */
export type EdgeErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "too_large"
  | "rate_limited"
  | "unavailable"
  | "internal";

/**
 * The SDK's own codes:
 * - `closed`: the client was closed (or ended after a fatal close code).
 * - `disconnected`: the connection dropped while the request was in flight;
 *   it may or may not have run. Publishes never fail this way: they are
 *   resent with the same msg_id.
 * - `timeout`: no reply within `requestTimeout`.
 * - `queue_full`: a publish while offline found the offline queue full.
 * - `aborted`: the caller's AbortSignal fired.
 */
export type ClientErrorCode = "closed" | "disconnected" | "timeout" | "queue_full" | "aborted";

export type ErrorCode = EdgeErrorCode | ClientErrorCode;

/** Every error the SDK rejects with or reports. */
export class ParleyError extends Error {
  override readonly name = "ParleyError";
  /** An edge error code, or one of the SDK's own. */
  readonly code: ErrorCode;
  /** The WebSocket close code, when a close ended the client. */
  readonly closeCode: number | undefined;

  constructor(code: ErrorCode, message: string, closeCode?: number) {
    super(message);
    this.code = code;
    this.closeCode = closeCode;
  }
}
