// The real centrifuge SDK (npm, 5.x, unmodified) against a real Parley edge
// at /connection/websocket. The edge, NATS, presence and a Parley Go client
// (alice) are started by the Go test that runs this file:
//   (cd internal/edge/testdata/centrifuge-js && npm ci)
//   go test ./internal/edge -run TestCentrifugeJS -v
import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Centrifuge } from "centrifuge";

const CONTROL = process.env.PARLEY_TEST_CONTROL;
if (!CONTROL) {
  throw new Error("this test needs the edge its Go test starts: go test ./internal/edge -run TestCentrifugeJS -v");
}

async function control(path, body) {
  const res = await fetch(CONTROL + path, body === undefined
    ? {}
    : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`control ${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

const info = await control("/info");

let rooms = 0;
function uniqueRoom(what) {
  return `cjs-${what}-${process.pid}-${++rooms}`;
}

async function waitFor(what, cond, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const clients = [];
after(() => clients.forEach((c) => c.disconnect()));

// Node 20 has no global WebSocket: the SDK takes ws through its websocket
// option (centrifuge-js's README). Quick reconnects keep the test short.
function newClient() {
  const c = new Centrifuge(info.url, { token: info.token, websocket: WebSocket, minReconnectDelay: 50, maxReconnectDelay: 400 });
  clients.push(c);
  return c;
}

// A subscription with its events recorded in order.
function newSub(c, room, opts = {}) {
  const sub = c.newSubscription(room, opts);
  const rec = { sub, pubs: [], subscribed: [], joins: [], errors: [] };
  sub.on("publication", (ctx) => rec.pubs.push(ctx));
  sub.on("subscribed", (ctx) => rec.subscribed.push(ctx));
  sub.on("join", (ctx) => rec.joins.push(ctx.info.user));
  sub.on("error", (ctx) => rec.errors.push(ctx));
  sub.subscribe();
  return rec;
}

const offsets = (pubs) => pubs.map((p) => Number(p.offset));

test("connects with a Parley JWT; messages both ways with a Parley client; history and presence", async () => {
  const c = newClient();
  let connected;
  c.on("connected", (ctx) => { connected = ctx; });
  const room = uniqueRoom("flow");
  const s = newSub(c, room, { joinLeave: true });
  c.connect();
  await s.sub.ready(10_000);
  assert.ok(connected?.client, "connect reply has a client id");
  const first = s.subscribed[0];
  assert.equal(first.recoverable, true);
  assert.equal(first.positioned, true);
  assert.ok(first.streamPosition?.epoch, "subscribe reply has an epoch");
  const epoch = first.streamPosition.epoch;

  // alice (Parley's Go client) enters: carol asked for join pushes.
  await control("/parley/subscribe", { room });
  await waitFor("alice's join push", () => s.joins.includes("alice"));

  // Parley → Centrifugo: the offset is the stream seq, info.user the sender.
  const { seqs: [s1] } = await control("/parley/publish", { room, texts: ["hi carol"] });
  const p1 = await waitFor("alice's publication", () => s.pubs.find((p) => Number(p.offset) === s1));
  assert.deepEqual(p1.data, { text: "hi carol" });
  assert.equal(p1.info?.user, "alice");

  // Centrifugo → Parley, and back to carol herself with the same seq.
  await s.sub.publish({ text: "hi alice" });
  const got = await waitFor("carol's message at alice", async () => {
    const { msgs } = await control("/parley/received", { room });
    return msgs.find((m) => m.from === "carol");
  });
  assert.deepEqual(got.data, { text: "hi alice" });
  const own = await waitFor("carol's own publication", () => s.pubs.find((p) => Number(p.offset) === got.seq));
  assert.equal(own.info?.user, "carol");
  assert.deepEqual(offsets(s.pubs), [s1, got.seq], "publications in stream order, each once");
  const { msgs: aliceSaw } = await control("/parley/received", { room });
  assert.deepEqual(aliceSaw.map((m) => m.seq), [s1, got.seq], "alice saw the same order");

  const hist = await s.sub.history({ limit: 10 });
  assert.deepEqual(offsets(hist.publications), [s1, got.seq]);
  assert.equal(hist.epoch, epoch);
  assert.equal(Number(hist.offset), got.seq);
  assert.deepEqual(hist.publications.map((p) => p.data.text), ["hi carol", "hi alice"]);
  const since = await s.sub.history({ limit: 10, since: { offset: s1, epoch } });
  assert.deepEqual(offsets(since.publications), [got.seq]);
  const rev = await s.sub.history({ limit: 1, reverse: true });
  assert.deepEqual(offsets(rev.publications), [got.seq]);

  // Presence is eventually consistent (presence service over NATS).
  await waitFor("carol and alice in presence", async () => {
    const p = await s.sub.presence();
    const users = Object.values(p.clients).map((ci) => ci.user).sort();
    return users.length === 2 && users[0] === "alice" && users[1] === "carol";
  });
  const stats = await s.sub.presenceStats();
  assert.equal(stats.numUsers, 2);
  assert.deepEqual(s.errors, []);
});

test("recovers what was published while disconnected: recovered, in order, once", async () => {
  const c = newClient();
  const room = uniqueRoom("recover");
  const s = newSub(c, room);
  c.connect();
  await s.sub.ready(10_000);
  const { seqs: before } = await control("/parley/publish", { room, texts: ["before"] });
  await waitFor("the live publication", () => s.pubs.length === 1);
  assert.deepEqual(offsets(s.pubs), before);

  c.disconnect();
  const texts = ["away-0", "away-1", "away-2", "away-3", "away-4"];
  const { seqs: missed } = await control("/parley/publish", { room, texts });
  c.connect();
  await waitFor("the resubscribe", () => s.subscribed.length === 2);
  const again = s.subscribed[1];
  assert.equal(again.wasRecovering, true);
  assert.equal(again.recovered, true, "every missed message was still in the stream");
  await waitFor("the recovered publications", () => s.pubs.length >= 1 + missed.length);
  // Nothing more must come: a duplicate would arrive right after.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(offsets(s.pubs), [...before, ...missed], "each missed message once, in order");
  assert.deepEqual(s.pubs.slice(1).map((p) => p.data.text), texts);

  // And live again.
  const { seqs: live } = await control("/parley/publish", { room, texts: ["back"] });
  await waitFor("live after recovery", () => s.pubs.length === 2 + missed.length);
  assert.deepEqual(offsets(s.pubs).slice(-1), live);
  assert.deepEqual(s.errors, []);
});
