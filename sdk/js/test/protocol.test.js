// The client's protocol bookkeeping against a scripted edge (a fake
// WebSocket), for what a real edge does rarely or never on cue: duplicates
// at a seam, a reply and messages in one frame, a stream reset, a `last`
// cut off before its replay, close codes. Needs no mesh.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ParleyClient } from "../dist/index.js";

/** A WebSocket whose edge side the test scripts. */
class FakeWS {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWS.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
  }
  // The edge's side.
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }
  push(...lines) {
    this.onmessage?.({ data: lines.map((l) => JSON.stringify(l)).join("\n") });
  }
  drop(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  /** The first request with op (and matching fields) sent since the last call for it. */
  async request(op, timeout = 2000) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const i = this.sent.findIndex((r) => r.op === op);
      if (i >= 0) return this.sent.splice(i, 1)[0];
      if (Date.now() > deadline) throw new Error(`no ${op} request; sent: ${JSON.stringify(this.sent)}`);
      await tick();
    }
  }
}

const tick = () => new Promise((r) => setTimeout(r, 2));

async function nextSocket(after) {
  for (let i = 0; i < 1000; i++) {
    const ws = FakeWS.all.at(-1);
    if (ws && ws !== after) return ws;
    await tick();
  }
  throw new Error("the client did not reconnect");
}

function start(opts = {}) {
  FakeWS.all = [];
  const c = new ParleyClient({ url: "ws://edge-a/ws", user: "alice", WebSocket: FakeWS, reconnect: { minDelay: 1, maxDelay: 5 }, ...opts });
  const events = [];
  for (const name of ["connected", "disconnected", "reconnected", "lost", "closed"]) c.on(name, (e) => events.push({ name, ...e }));
  return { c, events };
}

async function connected(c) {
  const p = c.connect();
  const ws = await nextSocket();
  ws.accept();
  await p;
  return ws;
}

/** Subscribes room on c and returns what the client sent for it, and a list of the seqs it delivers. */
async function subscribed(c, ws, room, opts) {
  const sub = c.subscribe(room, opts);
  const got = [];
  sub.on("message", (m) => got.push(m.seq));
  return { sub, got, req: await ws.request("sub") };
}

/** The connection breaks (1006); returns the client's next one, accepted. */
async function redial(ws) {
  ws.drop(1006);
  const next = await nextSocket(ws);
  next.accept();
  return next;
}

const msg = (room, seq) => ({ op: "msg", room, seq, from: "bob", ts: 1, data: { n: seq } });

test("reply first, then the room's messages of the same frame; at or below the position is dropped", async () => {
  const { c } = start();
  const ws = await connected(c);
  let { sub, got, req } = await subscribed(c, ws, "r", undefined);
  assert.deepEqual(req, { id: req.id, op: "sub", room: "r" });
  ws.push({ id: req.id, ok: true, room: "r", seq: 10 }, msg("r", 11), msg("r", 11), msg("r", 9), msg("r", 12));
  assert.deepEqual(got, [11, 12]);
  assert.equal(c.duplicates, 2);
  assert.equal((await sub.ready).seq, 10);
  assert.equal(sub.position, 12);
  c.close();
});

test("a resume starts at the position and keeps it (not the reply's seq); a reset drops it to the reply's", async () => {
  const { c, events } = start();
  let ws = await connected(c);
  let { sub, got, req } = await subscribed(c, ws, "r", { since: 40 });
  assert.equal(req.since, 40);
  // The reply's seq is where the replay ends: the replay must not be discarded.
  ws.push({ id: req.id, ok: true, room: "r", seq: 43, recovered: true }, msg("r", 41), msg("r", 43));
  assert.deepEqual(got, [41, 43]);

  ws = await redial(ws);
  req = await ws.request("sub");
  assert.equal(req.since, 43, "resubscribed from the last seq handed over");
  ws.push({ id: req.id, ok: true, room: "r", seq: 45, recovered: true }, msg("r", 43), msg("r", 45));
  assert.deepEqual(got, [41, 43, 45]);
  await tick();
  assert.ok(events.some((e) => e.name === "reconnected"));

  // The stream was recreated: since is beyond anything it stored.
  ws = await redial(ws);
  req = await ws.request("sub");
  assert.equal(req.since, 45);
  ws.push({ id: req.id, ok: true, room: "r", seq: 2, recovered: false, reason: "stream reset" }, msg("r", 3));
  assert.deepEqual(got, [41, 43, 45, 3], "the new stream's messages are not taken for old ones");
  await tick();
  const lost = events.find((e) => e.name === "lost");
  assert.deepEqual(lost, { name: "lost", room: "r", since: 45, seq: 2, reason: "stream reset", reset: true });
  c.close();
});

test("a last cut off before its replay is completed from history, then resumed after its reply's seq", async () => {
  const { c } = start();
  let ws = await connected(c);
  let { sub, got, req } = await subscribed(c, ws, "r", { last: 3 });
  assert.equal(req.last, 3);
  ws.push({ id: req.id, ok: true, room: "r", seq: 50, recovered: true });
  ws = await redial(ws); // before any of the 3 arrived
  req = await ws.request("history");
  assert.deepEqual({ before: req.before, limit: req.limit }, { before: 51, limit: 3 });
  ws.push({ id: req.id, ok: true, msgs: [msg("r", 44), msg("r", 47), msg("r", 50)] });
  req = await ws.request("sub");
  assert.equal(req.since, 50, "not since 0: that would replay the whole room");
  ws.push({ id: req.id, ok: true, room: "r", seq: 52, recovered: true }, msg("r", 52));
  assert.deepEqual(got, [44, 47, 50, 52]);
  c.close();
});

test("an unacked publish is resent with the same msg_id after the rooms are back; frames split on newlines", async () => {
  const { c } = start();
  let ws = await connected(c);
  const sub = c.subscribe("r");
  let req = await ws.request("sub");
  ws.push({ id: req.id, ok: true, room: "r", seq: 0 });
  const ack = c.publish("r", { text: "hi" });
  const first = await ws.request("pub");
  assert.match(first.msg_id, /^js-[A-Za-z0-9_-]{22}$/);
  ws = await redial(ws);
  await tick();
  assert.equal(ws.sent.filter((r) => r.op === "pub").length, 0, "publishes wait for the resubscription");
  req = await ws.request("sub");
  ws.push({ id: req.id, ok: true, room: "r", seq: 7, recovered: true }, msg("r", 7));
  const again = await ws.request("pub");
  assert.equal(again.msg_id, first.msg_id);
  assert.deepEqual(again.data, { text: "hi" });
  ws.onmessage({ data: `\n${JSON.stringify({ id: again.id, ok: true, seq: 7, dup: true })}\r\n\n` });
  assert.deepEqual(await ack, { seq: 7, dup: true, msgId: first.msg_id });
  assert.equal(sub.position, 7);
  c.close();
});

test("close codes: 4003 moves to the next URL at once, 4004 ends the client, 4001 refreshes the token", async () => {
  let { c, events } = start({ url: ["ws://edge-a/ws", "ws://edge-b/ws"] });
  let ws = await connected(c);
  assert.match(ws.url, /^ws:\/\/edge-a\/ws\?user=alice$/);
  ws.drop(4003, "edge shutting down");
  ws = await nextSocket(ws);
  assert.match(ws.url, /^ws:\/\/edge-b\//);
  ws.accept();
  await tick(); // a real socket's close is a later task than its open
  ws.drop(4004, "policy violation");
  await tick();
  assert.equal(c.state, "closed");
  assert.equal(events.at(-1).error.closeCode, 4004);
  assert.equal(FakeWS.all.length, 2, "no reconnect after 4004");

  let n = 0;
  ({ c, events } = start({ user: undefined, token: async () => `t${++n}` }));
  ws = await connected(c);
  assert.match(ws.url, /\?token=t1$/);
  ws.drop(4001, "token expired");
  ws = await nextSocket(ws);
  assert.match(ws.url, /\?token=t2$/, "a fresh token for the reconnect");
  ws.accept();
  c.close();

  ({ c, events } = start({ user: undefined, token: "fixed" }));
  ws = await connected(c);
  ws.drop(4001, "token expired");
  await tick();
  assert.equal(c.state, "closed", "a fixed token cannot be refreshed");
});

test("requests wait for a connection, time out, and fail with the connection", async () => {
  const { c } = start({ requestTimeout: 50 });
  const early = c.presence("r"); // before connect: waits
  const ws = await connected(c);
  const req = await ws.request("presence");
  ws.push({ id: req.id, ok: true, room: "r", users: ["alice"] });
  assert.deepEqual(await early, { users: ["alice"] });
  await assert.rejects(c.ping(), (e) => e.code === "timeout");
  const inFlight = c.history("r");
  await ws.request("history");
  ws.drop(1006);
  await assert.rejects(inFlight, (e) => e.code === "disconnected");
  c.close();
  await assert.rejects(c.presence("r"), (e) => e.code === "closed");
});
