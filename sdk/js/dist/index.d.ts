/**
 * @parley-mesh/client: the TypeScript client of Parley's WebSocket protocol
 * v1 (docs/protocol.md), for browsers and Node >= 20.
 */
export { ParleyClient } from "./client.js";
export { Subscription, type SubscribeResult } from "./subscription.js";
export { ParleyError, type ErrorCode, type EdgeErrorCode, type ClientErrorCode } from "./errors.js";
export { Emitter } from "./emitter.js";
export type * from "./types.js";
