// Helpers of the SDK's tests. The tests run against a real mesh started by
// the Go test that runs them (internal/webui: go test ./internal/webui),
// which passes its control API in PARLEY_TEST_CONTROL.
import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { ParleyClient } from "../dist/index.js";

const CONTROL = process.env.PARLEY_TEST_CONTROL;
if (!CONTROL) {
  throw new Error("these tests need the mesh their Go test starts: run go test ./internal/webui -run 'TestSDK|TestChatPageInChromium' -v");
}

/** Calls the control API: POST with a JSON body, or GET without one. */
export async function control(path, body) {
  const res = await fetch(CONTROL + path, body === undefined && path === "/info"
    ? {}
    : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body ?? {}) });
  if (!res.ok) throw new Error(`control ${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

/** The mesh's URLs: base (the page), ws (restartable edge), proxy (ack-losing proxy to it), jwt (the JWT edge), secret. */
export const info = await control("/info");

let rooms = 0;
/** A room name no other test uses. */
export function uniqueRoom(what) {
  return `${what}-${process.pid}-${++rooms}`;
}

/** Quick reconnects, so tests do not wait for the production backoff. */
export const fastReconnect = { minDelay: 50, maxDelay: 400 };

const clients = new Set();
/** A client on Node's side (ws as the WebSocket), closed by closeAll. */
export function newClient(opts) {
  const c = new ParleyClient({ url: info.ws, WebSocket, reconnect: fastReconnect, ...opts });
  clients.add(c);
  return c;
}

export function closeAll() {
  for (const c of clients) c.close();
  clients.clear();
}

/** Resolves when cond() is true; rejects after timeout ms, saying what was awaited. */
export async function waitFor(what, cond, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Every event of the given names a client emits, in order. */
export function record(client, ...names) {
  const seen = [];
  for (const n of names) client.on(n, (ev) => seen.push({ event: n, ...ev }));
  return seen;
}

/** Every message a subscription delivers, in order. */
export function collect(sub) {
  const got = [];
  sub.on("message", (m) => got.push(m));
  return got;
}

/**
 * Checks messages are in strictly increasing seq order (so no repeat) and
 * that their texts are exactly the expected ones, each once.
 */
export function assertExactlyOnce(assert, got, expectedTexts) {
  for (let i = 1; i < got.length; i++) {
    assert.ok(got[i].seq > got[i - 1].seq, `seq ${got[i].seq} after ${got[i - 1].seq}: out of order or repeated`);
  }
  assert.deepEqual(got.map((m) => m.data.text).sort(), [...expectedTexts].sort());
}

/** An HS256 JWT for the mesh's JWT edge. */
export function hs256(claims, secret = info.secret) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64(claims);
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}
