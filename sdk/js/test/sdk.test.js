// The SDK against a real mesh (see harness.js). Run: go test ./internal/webui -run TestSDK -v
import { after, afterEach, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { ParleyClient, ParleyError } from "../dist/index.js";
import {
  assertExactlyOnce,
  closeAll,
  collect,
  control,
  fastReconnect,
  hs256,
  info,
  newClient,
  record,
  uniqueRoom,
  waitFor,
} from "./harness.js";

afterEach(async () => {
  closeAll();
  await control("/edge/start"); // a failed test may leave the edge stopped
});
after(closeAll);

const text = (t) => ({ text: t });

test("resume across an edge restart: messages published meanwhile arrive once, in order", async () => {
  const room = uniqueRoom("restart");
  const reader = newClient({ user: "reader" });
  const events = record(reader, "disconnected", "reconnected", "lost");
  await reader.connect();
  const sub = reader.subscribe(room);
  const got = collect(sub);
  await sub.ready;
  const writer = newClient({ user: "writer" });
  await writer.connect();

  const expected = [];
  for (let i = 0; i < 5; i++) {
    expected.push(`before-${i}`);
    await writer.publish(room, text(`before-${i}`));
  }
  await waitFor("the first 5 messages", () => got.length === 5);

  await control("/edge/stop");
  await waitFor("both clients to see the edge go", () => reader.state !== "connected" && writer.state !== "connected");
  assert.equal(events[0].event, "disconnected");
  assert.equal(events[0].code, 4003, "a draining edge closes with 4003");

  // While no edge runs: a backend service publishes into JetStream, and
  // the writer's publishes wait in its offline queue.
  const backend = Array.from({ length: 10 }, (_, i) => `meanwhile-${i}`);
  await control("/publish", { room, texts: backend });
  expected.push(...backend);
  const offline = ["offline-0", "offline-1", "offline-2"];
  const acks = offline.map((t) => writer.publish(room, text(t)));
  expected.push(...offline);
  assert.equal(writer.queuedPublishes, 3);

  await control("/edge/start");
  const offlineAcks = await Promise.all(acks);
  assert.ok(offlineAcks.every((a) => !a.dup), "first sends, not retries");
  assert.ok(offlineAcks[0].seq < offlineAcks[1].seq && offlineAcks[1].seq < offlineAcks[2].seq, "queued publishes go out in order");

  await writer.publish(room, text("after"));
  expected.push("after");
  await waitFor("every message after the restart", () => got.length >= expected.length);
  await new Promise((r) => setTimeout(r, 200)); // a repeat would arrive now
  assertExactlyOnce(assert, got, expected);
  assert.equal(sub.position, got.at(-1).seq);
  assert.deepEqual(events.map((e) => e.event), ["disconnected", "reconnected"]);
  assert.equal(reader.state, "connected");
});

test("a publish whose ack was lost is resent with its msg_id and stored once", async () => {
  const room = uniqueRoom("dedup");
  const watcher = newClient({ user: "watcher" });
  await watcher.connect();
  const wsub = watcher.subscribe(room);
  const watched = collect(wsub);
  await wsub.ready;

  const c = newClient({ user: "retrier", url: info.proxy });
  const events = record(c, "disconnected", "reconnected");
  await c.connect();
  const mine = c.subscribe(room);
  const got = collect(mine);
  await mine.ready;

  // The proxy swallows the ack and resets the connection: the edge stored
  // the message but the client cannot know. It reconnects and resends.
  await control("/proxy/drop-ack");
  const ack = await c.publish(room, text("only once"));
  assert.equal(ack.dup, true, "the resend must be recognised as a duplicate of the stored message");
  assert.deepEqual(events.map((e) => e.event), ["disconnected", "reconnected"]);

  // The same msg_id given by the application dedups too.
  const again = await c.publish(room, text("only once, again"), { msgId: ack.msgId });
  assert.deepEqual(again, { seq: ack.seq, dup: true, msgId: ack.msgId });

  const { messages } = await watcher.history(room);
  assert.equal(messages.length, 1, "stored once");
  assert.equal(messages[0].msgId, ack.msgId);
  assert.equal(messages[0].seq, ack.seq);
  await waitFor("the message at both subscribers", () => got.length === 1 && watched.length === 1);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(got.length, 1);
  assert.equal(watched.length, 1);
});

test("the token function is called again on reconnect: an expired token is replaced", async () => {
  const room = uniqueRoom("token");
  const tokens = [];
  const token = async () => {
    // The first token expires in about a second; the edge then closes
    // with 4001 and the client asks for a new one.
    const exp = Math.floor(Date.now() / 1000) + (tokens.length === 0 ? 2 : 600);
    const t = hs256({ sub: "tok", exp, parley: { subscribe: ["*"], publish: ["*"] } });
    tokens.push(t);
    return t;
  };
  const c = new ParleyClient({ url: info.jwt, token, WebSocket, reconnect: fastReconnect });
  const events = record(c, "disconnected", "reconnected", "closed");
  try {
    await c.connect();
    const sub = c.subscribe(room);
    const got = collect(sub);
    await sub.ready;
    await c.publish(room, text("first token"));
    await waitFor("the token to expire and be replaced", () => events.some((e) => e.event === "reconnected"), 10_000);
    assert.equal(events[0].event, "disconnected");
    assert.equal(events[0].code, 4001, "closed for the expired token");
    assert.equal(tokens.length, 2, "one new token for the reconnect");
    assert.notEqual(tokens[0], tokens[1]);
    await c.publish(room, text("second token"));
    await waitFor("both messages", () => got.length === 2);
    assertExactlyOnce(assert, got, ["first token", "second token"]);
  } finally {
    c.close();
  }

  // A fixed token cannot be refreshed: 4001 ends the client, it says why.
  const fixed = new ParleyClient({
    url: info.jwt,
    WebSocket,
    reconnect: fastReconnect,
    token: hs256({ sub: "fixed", exp: Math.floor(Date.now() / 1000) + 1, parley: { subscribe: ["*"] } }),
  });
  const closed = new Promise((resolve) => fixed.on("closed", resolve));
  await fixed.connect();
  const { error } = await closed;
  assert.ok(error instanceof ParleyError);
  assert.equal(error.closeCode, 4001);
  assert.equal(fixed.state, "closed");
});

test("offline publishes wait in a bounded queue and go out in order on reconnect", async () => {
  const room = uniqueRoom("queue");
  const c = newClient({ user: "queuer", offlineQueue: 3 });
  await c.connect();
  const sub = c.subscribe(room);
  const got = collect(sub);
  await sub.ready;

  await control("/edge/stop");
  await waitFor("the client to be offline", () => c.state !== "connected");
  const queued = ["q-0", "q-1"].map((t) => c.publish(room, text(t)));
  const ctl = new AbortController();
  const aborted = c.publish(room, text("never"), { signal: ctl.signal }).catch((e) => e);
  assert.equal(c.queuedPublishes, 3);
  const full = (err) => err instanceof ParleyError && err.code === "queue_full";
  await assert.rejects(c.publish(room, text("refused")), full);

  // An aborted publish leaves the queue and frees its place.
  ctl.abort();
  assert.equal((await aborted).code, "aborted");
  assert.equal(c.queuedPublishes, 2);
  queued.push(c.publish(room, text("q-2")));
  await assert.rejects(c.publish(room, text("refused")), full);
  assert.equal(c.queuedPublishes, 3);

  await control("/edge/start");
  const acks = await Promise.all(queued);
  assert.ok(acks[0].seq < acks[1].seq && acks[1].seq < acks[2].seq);
  await waitFor("the queued messages", () => got.length === 3);
  assert.deepEqual(got.map((m) => m.data.text), ["q-0", "q-1", "q-2"]);
  assert.equal(c.queuedPublishes, 0);
});

test("since, last, history, presence, join/leave and async iterators", async () => {
  const room = uniqueRoom("api");
  const { seqs } = await control("/publish", { room, texts: ["h-0", "h-1", "h-2", "h-3", "h-4"] });

  const alice = newClient({ user: "alice" });
  await alice.connect();
  // last: the newest 2, then live.
  const sub = alice.subscribe(room, { last: 2 });
  const it = sub[Symbol.asyncIterator]();
  const ready = await sub.ready;
  assert.equal(ready.seq, seqs[4]);
  assert.equal((await it.next()).value.data.text, "h-3");
  assert.equal((await it.next()).value.data.text, "h-4");

  // since: every message after it.
  const bob = newClient({ user: "bob" });
  const joins = record(alice, "join", "leave");
  await bob.connect();
  const bsub = bob.subscribe(room, { since: seqs[1] });
  const bgot = collect(bsub);
  assert.equal((await bsub.ready).recovered, true);
  await waitFor("bob's resume", () => bgot.length === 3);
  assert.deepEqual(bgot.map((m) => m.data.text), ["h-2", "h-3", "h-4"]);

  await bob.publish(room, text("live"));
  assert.equal((await it.next()).value.data.text, "live");

  const h = await alice.history(room, { before: seqs[3], limit: 2 });
  assert.deepEqual(h.messages.map((m) => m.data.text), ["h-1", "h-2"]);
  await waitFor("both present", async () => (await alice.presence(room)).users.join() === "alice,bob");
  await waitFor("bob's join", () => joins.some((e) => e.event === "join" && e.user === "bob"));

  await bsub.unsubscribe();
  assert.equal(bsub.active, false);
  await waitFor("bob's leave", () => joins.some((e) => e.event === "leave" && e.user === "bob"));
  await waitFor("alice alone", async () => (await alice.presence(room)).users.join() === "alice");

  assert.throws(() => alice.subscribe(room), (e) => e.code === "bad_request", "already subscribed");
  assert.throws(() => alice.subscribe("no spaces"), TypeError);
  await assert.rejects(alice.history("x", { limit: -1 }), TypeError);
  await it.return();
  alice.close();
  assert.equal((await sub.ready).room, room);
  await assert.rejects(alice.ping(), (e) => e.code === "closed");
});
