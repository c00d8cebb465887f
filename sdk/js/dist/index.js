/**
 * @parley-mesh/client: the TypeScript client of Parley's WebSocket protocol
 * v1 (docs/protocol.md), for browsers and Node >= 20.
 */
export { ParleyClient } from "./client.js";
export { Subscription } from "./subscription.js";
export { ParleyError } from "./errors.js";
export { Emitter } from "./emitter.js";
