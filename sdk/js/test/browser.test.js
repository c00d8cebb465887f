// The chat page (internal/webui) in a real headless Chromium, against a real
// mesh (see harness.js). Run: go test ./internal/webui -run TestChatPageInChromium -v
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import puppeteer from "puppeteer-core";
import { control, hs256, info, uniqueRoom } from "./harness.js";

const CHROMIUM = process.env.PARLEY_CHROMIUM;
const SHOTS = process.env.PARLEY_SCREENSHOT_DIR;
if (!CHROMIUM || !SHOTS) throw new Error("PARLEY_CHROMIUM and PARLEY_SCREENSHOT_DIR are set by the Go test");

let browser;
const problems = [];

before(async () => {
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // No sandbox: CI runs as root. The rest keeps Chromium off the network
    // (this machine has none beyond loopback) and quick to start.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
});

after(async () => {
  await browser?.close();
  await control("/edge/start");
});

/** A page of its own browser context (no shared storage), as user in room (at url, default the insecure edge's). */
async function openPage(user, room, url = `${info.base}/?user=${user}&room=${room}`) {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  page.on("pageerror", (err) => problems.push(`${user}: page error: ${err.message}`));
  page.on("console", (msg) => {
    // Chromium itself logs each refused reconnect while the edge is down.
    if (msg.type() === "error" && !/^WebSocket connection to .* failed/.test(msg.text())) {
      problems.push(`${user}: console: ${msg.text()}`);
    }
  });
  await page.setViewport({ width: 900, height: 560 });
  await page.goto(url, { waitUntil: "load" });
  return page;
}

/** The page's messages as shown: [{seq, from, text}], top to bottom. */
function shown(page) {
  return page.$$eval("#messages li[data-seq]", (els) =>
    els.map((el) => ({ seq: Number(el.dataset.seq), from: el.dataset.from, text: el.querySelector(".text").textContent })),
  );
}

function waitForTexts(page, texts, timeout = 20_000) {
  return page.waitForFunction(
    (want) => {
      const have = new Set([...document.querySelectorAll("#messages .text")].map((e) => e.textContent));
      return want.every((t) => have.has(t));
    },
    { timeout, polling: 50 },
    texts,
  );
}

function waitForPresence(page, users) {
  return page.waitForFunction(
    (want) => want.every((u) => document.querySelector(`#presence li[data-user="${u}"]`)),
    { timeout: 20_000, polling: 100 },
    users,
  );
}

async function send(page, text) {
  await page.type("#text", text);
  await page.keyboard.press("Enter");
}

/** The page's list is in seq order, with no seq twice and each expected text once. */
async function assertExactlyOnce(page, who, expected) {
  const msgs = await shown(page);
  for (let i = 1; i < msgs.length; i++) {
    assert.ok(msgs[i].seq > msgs[i - 1].seq, `${who}: seq ${msgs[i].seq} shown after ${msgs[i - 1].seq}`);
  }
  assert.deepEqual(msgs.map((m) => m.text).sort(), [...expected].sort(), `${who}: every message once`);
  const dups = await page.evaluate(() => window.parley.client.duplicates);
  return { count: msgs.length, dups };
}

test("two pages chat, survive an edge restart without loss or repeat, and see each other", async () => {
  const room = uniqueRoom("browser");
  // The room's past: the pages show the newest 50 (they subscribe with
  // last: 50); the 5 before come with "Load older messages" (history).
  const older = Array.from({ length: 5 }, (_, i) => `older-${i}`);
  const earlier = Array.from({ length: 50 }, (_, i) => `earlier-${i}`);
  await control("/publish", { room, texts: [...older, ...earlier] });

  const alice = await openPage("alice", room);
  const bob = await openPage("bob", room);
  for (const page of [alice, bob]) {
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 20_000 });
    await waitForTexts(page, earlier);
  }
  await waitForPresence(alice, ["alice", "bob"]);
  await waitForPresence(bob, ["alice", "bob"]);

  // A message typed in one page appears in the other.
  await send(alice, "hello from alice");
  await waitForTexts(bob, ["hello from alice"]);
  await send(bob, "hi alice, bob here");
  await waitForTexts(alice, ["hi alice, bob here"]);

  // The edge restarts under both pages. Meanwhile a backend service
  // publishes, and alice types (her message waits in the SDK's queue).
  await control("/edge/stop");
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => document.querySelector("#status").dataset.state !== "connected", { timeout: 20_000 });
  }
  const meanwhile = ["while-down-0", "while-down-1", "while-down-2"];
  await control("/publish", { room, texts: meanwhile });
  await send(alice, "typed while offline");
  await alice.waitForSelector("#queued:not([hidden])", { timeout: 20_000 });
  await alice.screenshot({ path: join(SHOTS, "alice-offline.png") });
  await control("/edge/start");

  for (const page of [alice, bob]) {
    await page.waitForSelector('#status[data-state="connected"][data-reconnects="1"]', { timeout: 20_000 });
  }
  await send(bob, "after the restart");
  const expected = [...earlier, "hello from alice", "hi alice, bob here", ...meanwhile, "typed while offline", "after the restart"];
  for (const page of [alice, bob]) await waitForTexts(page, expected);
  await new Promise((r) => setTimeout(r, 300)); // a repeat would show now
  const a = await assertExactlyOnce(alice, "alice", expected);
  const b = await assertExactlyOnce(bob, "bob", expected);
  assert.equal(a.count, expected.length);
  assert.equal(b.count, expected.length);

  // Presence after the resume: both users, on both pages.
  await waitForPresence(alice, ["alice", "bob"]);
  await waitForPresence(bob, ["alice", "bob"]);

  // Scrolling back: older messages come from history, in place, once.
  await alice.click("#older");
  await waitForTexts(alice, older);
  await assertExactlyOnce(alice, "alice after history", [...older, ...expected]);
  const top = await shown(alice);
  assert.equal(top[0].text, "older-0", "history goes above, in seq order");
  await alice.click("#older");
  await alice.waitForFunction(() => document.querySelector("#messages li.note"), { timeout: 20_000 });

  const shot = join(SHOTS, "chat.png");
  await bob.screenshot({ path: shot });
  console.log(`screenshot: ${shot} (and alice-offline.png beside it)`);
  assert.deepEqual(problems, [], "no page errors or console errors");
});

test("on an edge that takes only JWTs, the page asks for a token and works with it", async () => {
  const room = uniqueRoom("secure");
  const carol = await openPage("carol", room, `${info.jwtBase}/`);
  await carol.waitForSelector("#token-field:not([hidden])");
  assert.equal(await carol.$eval("#user-field", (el) => el.hidden), true, "no name field: ?user= would be refused");
  const token = hs256({ sub: "carol", exp: Math.floor(Date.now() / 1000) + 600, parley: { subscribe: ["*"], publish: ["*"] } });
  await carol.type("#token", token);
  await carol.$eval("#room", (el, r) => (el.value = r), room);
  await carol.click('#join button[type="submit"]');
  await carol.waitForSelector('#status[data-state="connected"]', { timeout: 20_000 });
  await send(carol, "hello with a token");
  await carol.waitForSelector('#messages li.mine[data-from="carol"]', { timeout: 20_000 });
  await waitForPresence(carol, ["carol"]);
  await carol.screenshot({ path: join(SHOTS, "secure.png") });
  assert.deepEqual(problems, [], "no page errors or console errors");
});
