// The chat page: a small application of the SDK (sdk/js), served by the
// edge itself, so the WebSocket is same-origin. ?user=NAME&room=ROOM joins
// at once (insecure dev mode); with a secure edge the page asks for a JWT.
// The page's client is window.parley.client, for the console.
import { ParleyClient } from "./sdk/index.js";

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 50;

const ui = {
  status: $("status"),
  messages: $("messages"),
  presence: $("presence"),
  banner: $("banner"),
  older: $("older"),
  queued: $("queued"),
};

let client;
let sub;
let me = "";
let room = "";
let reconnects = 0;
// seq -> <li>: the list is kept in seq order whatever order messages and
// history pages arrive in, and a seq is shown once.
const shown = new Map();

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function showBanner(text) {
  ui.banner.textContent = text;
  ui.banner.hidden = !text;
}

function textOf(data) {
  if (data && typeof data === "object" && typeof data.text === "string") return data.text;
  return typeof data === "string" ? data : JSON.stringify(data);
}

function render(m) {
  if (shown.has(m.seq)) return;
  const li = document.createElement("li");
  li.dataset.seq = String(m.seq);
  li.dataset.from = m.from ?? "";
  if (m.from === me) li.classList.add("mine");
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = m.from ?? "(backend)";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = textOf(m.data);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = new Date(m.ts).toLocaleTimeString();
  meta.title = `seq ${m.seq}`;
  li.append(from, text, meta);
  // Insert before the first shown message with a higher seq.
  let next = null;
  for (const [seq, el] of shown) {
    if (seq > m.seq && (next === null || seq < Number(next.dataset.seq))) next = el;
  }
  const atBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
  ui.messages.insertBefore(li, next);
  shown.set(m.seq, li);
  if (next === null && atBottom) li.scrollIntoView({ block: "end" });
}

function note(text) {
  const li = document.createElement("li");
  li.className = "note";
  li.textContent = text;
  ui.messages.prepend(li);
}

async function refreshPresence() {
  if (!client || client.state !== "connected") return;
  try {
    const { users } = await client.presence(room);
    ui.presence.replaceChildren(
      ...users.map((u) => {
        const li = document.createElement("li");
        li.dataset.user = u;
        li.textContent = u === me ? `${u} (you)` : u;
        return li;
      }),
    );
  } catch (err) {
    // Presence is best effort (no presence service: unavailable).
    console.warn("presence", err);
  }
}

function showQueued() {
  const n = client.queuedPublishes;
  ui.queued.hidden = n === 0 || client.state === "connected";
  ui.queued.textContent = `${n} waiting to be sent`;
}

async function loadOlder() {
  const oldest = Math.min(...shown.keys());
  ui.older.disabled = true;
  try {
    const h = await client.history(room, { before: Number.isFinite(oldest) ? oldest : 0, limit: HISTORY_PAGE });
    for (const m of h.messages) render(m);
    if (h.reason) showBanner(h.reason);
    if (h.messages.length === 0) {
      note("The beginning of the room.");
      ui.older.hidden = true;
    }
  } catch (err) {
    showBanner(`Could not load older messages: ${err.message}`);
  } finally {
    ui.older.disabled = false;
  }
}

// The user a JWT names (its sub), to mark one's own messages; the edge
// checks the token, this only reads it.
function subOf(token) {
  try {
    const body = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return String(JSON.parse(atob(body)).sub ?? "");
  } catch {
    return "";
  }
}

async function join({ user, token }) {
  me = user ?? subOf(token);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  client = new ParleyClient({
    url: `${scheme}//${location.host}/ws`,
    ...(user ? { user } : { token }),
  });
  window.parley = { client };

  let wasConnected = false;
  client.on("connecting", ({ attempt }) =>
    setStatus("connecting", wasConnected ? `reconnecting (attempt ${attempt})…` : attempt > 1 ? `connecting (attempt ${attempt})…` : "connecting…"),
  );
  client.on("connected", () => {
    wasConnected = true;
    setStatus("connected", "connected");
  });
  client.on("disconnected", ({ code, willReconnect }) => {
    setStatus("disconnected", willReconnect ? `connection lost (${code}), reconnecting…` : `disconnected (${code})`);
    showQueued();
  });
  client.on("reconnected", () => {
    reconnects++;
    ui.status.dataset.reconnects = String(reconnects);
    setStatus("connected", `resumed after reconnect${reconnects > 1 ? ` (${reconnects}×)` : ""}`);
    showQueued();
    void refreshPresence();
  });
  client.on("lost", (ev) => showBanner(`Some messages are no longer available: ${ev.reason}`));
  client.on("closed", ({ error }) => setStatus("closed", error ? `closed: ${error.message}` : "closed"));
  client.on("join", (ev) => ev.room === room && void refreshPresence());
  client.on("leave", (ev) => ev.room === room && void refreshPresence());

  await client.connect();
  sub = client.subscribe(room, { last: HISTORY_PAGE });
  window.parley.sub = sub;
  sub.on("message", render);
  sub.on("ended", ({ reason }) => showBanner(`Left ${room}: ${reason}`));
  const r = await sub.ready;
  if (r.recovered === false && r.reason) showBanner(r.reason);
  if (r.seq === 0) ui.older.hidden = true;
  void refreshPresence();
  // join/leave pushes are best effort: the list is also refreshed now and then.
  setInterval(refreshPresence, 15_000);
}

function start(config) {
  const params = new URLSearchParams(location.search);
  $("user-field").hidden = !config.insecure;
  $("user").required = config.insecure;
  $("token-field").hidden = config.insecure;
  $("token").required = !config.insecure;
  if (params.get("room")) $("room").value = params.get("room");
  if (params.get("user")) $("user").value = params.get("user");

  const enter = async (creds) => {
    room = $("room").value;
    $("join").hidden = true;
    $("chat").hidden = false;
    $("room-title").textContent = `#${room}`;
    document.title = `#${room} · Parley`;
    try {
      await join(creds);
    } catch (err) {
      setStatus("closed", `error: ${err.message}`);
    }
  };

  $("join").addEventListener("submit", (ev) => {
    ev.preventDefault();
    void enter(config.insecure ? { user: $("user").value } : { token: $("token").value });
  });
  $("send").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("text");
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    client.publish(room, { text }).then(showQueued, (err) => showBanner(`Not sent: ${err.message}`));
    showQueued();
  });
  ui.older.addEventListener("click", () => void loadOlder());

  if (config.insecure && params.get("user") && params.get("room")) void enter({ user: params.get("user") });
}

fetch("config.json")
  .then((r) => r.json())
  .then(start, (err) => setStatus("closed", `cannot load config.json: ${err.message}`));
