package edge

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/tracing"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// PresenceConfig is the edge's side of presence (docs/presence.md).
type PresenceConfig struct {
	// EdgeID names this edge in presence events; default "edge-" + random.
	// Give a stable id (the pod name) only if two edges never share it.
	EdgeID string
	// Heartbeat is how often the edge tells presence workers it is alive;
	// keep it well under the workers' --edge-timeout (default 10 s).
	Heartbeat time.Duration
	// MaxUsers bounds a presence reply (at most pjs.PresenceMaxQueryUsers).
	MaxUsers int
}

func (p *PresenceConfig) fillDefaults() {
	if p.EdgeID == "" {
		p.EdgeID = "edge-" + rand.Text()[:12]
	}
	if p.Heartbeat <= 0 {
		p.Heartbeat = 2 * time.Second
	}
	if p.MaxUsers <= 0 || p.MaxUsers > pjs.PresenceMaxQueryUsers {
		p.MaxUsers = pjs.PresenceMaxQueryUsers
	}
}

// presenceTracker counts, per (room, user), this edge's connections and
// publishes every change as an absolute count with a sequence number. A
// heartbeat carries only the edge id, the sequence and a digest of the
// counts, so its cost does not grow with users; the whole state travels
// only when a worker asks for it (after a gap, a digest mismatch, its own
// restart). It also holds one NATS subscription per room with local
// subscribers, for the join/leave pushes.
type presenceTracker struct {
	nc     *nats.Conn
	log    *slog.Logger
	cfg    PresenceConfig
	shards *liveShards // where room announcement subscriptions are dispatched

	mu      sync.Mutex
	seq     uint64
	counts  map[presenceKey]*localCount // room "" counts connections
	digest  uint64
	rooms   map[string]*presenceRoom
	stopped bool
	syncing *time.Timer // a snapshot is scheduled

	syncSub *nats.Subscription
	stop    chan struct{}
	done    chan struct{}
}

type presenceKey struct{ room, user string }

type localCount struct {
	conns int
	since int64 // Unix ms the count went from 0 to 1
}

type presenceRoom struct {
	unsub func()
	conns map[*Conn]struct{}
}

// syncDelay coalesces snapshot requests from several worker replicas into
// one snapshot.
const syncDelay = 50 * time.Millisecond

func newPresenceTracker(nc *nats.Conn, log *slog.Logger, cfg PresenceConfig) *presenceTracker {
	return &presenceTracker{
		nc: nc, log: log.With("edge", cfg.EdgeID), cfg: cfg,
		counts: make(map[presenceKey]*localCount),
		rooms:  make(map[string]*presenceRoom),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
}

// start says hello (a restarted edge with the same id drops its previous
// incarnation's users), listens for snapshot requests and starts beating.
func (t *presenceTracker) start() error {
	if !protocol.ValidName(t.cfg.EdgeID) {
		return fmt.Errorf("edge id %q is not 1-%d characters of [A-Za-z0-9_-]", t.cfg.EdgeID, protocol.MaxNameLen)
	}
	sub, err := t.nc.Subscribe(pjs.PresenceSyncSubject(t.cfg.EdgeID), t.onSync)
	if err != nil {
		return fmt.Errorf("subscribe presence sync: %w", err)
	}
	t.syncSub = sub
	t.mu.Lock()
	t.publishLocked(pjs.PresenceEdgeMsg{Kind: pjs.PresenceKindHello})
	t.mu.Unlock()
	go t.beat()
	return nil
}

func (t *presenceTracker) beat() {
	defer close(t.done)
	tick := time.NewTicker(t.cfg.Heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			t.mu.Lock()
			if !t.stopped {
				t.publishLocked(pjs.PresenceEdgeMsg{Kind: pjs.PresenceKindHeartbeat, Entries: len(t.counts), Digest: pjs.FormatPresenceDigest(t.digest)})
			}
			t.mu.Unlock()
		}
	}
}

// close says bye, so workers drop this edge's users at once instead of after
// the timeout. The edge calls it after its connections are closed.
func (t *presenceTracker) close() {
	t.mu.Lock()
	if t.stopped {
		t.mu.Unlock()
		return
	}
	t.publishLocked(pjs.PresenceEdgeMsg{Kind: pjs.PresenceKindBye})
	t.stopped = true
	if t.syncing != nil {
		t.syncing.Stop()
	}
	for room, pr := range t.rooms {
		if pr.unsub != nil {
			pr.unsub()
		}
		delete(t.rooms, room)
	}
	t.mu.Unlock()
	if t.syncSub != nil {
		_ = t.syncSub.Unsubscribe()
	}
	close(t.stop)
	<-t.done
}

// publishLocked stamps m with the edge id and sequence and publishes it.
// Holding t.mu orders publishes exactly as the sequence numbers say. A
// failed publish only shows the worker a gap, which it repairs.
func (t *presenceTracker) publishLocked(m pjs.PresenceEdgeMsg) {
	m.Edge, m.Seq = t.cfg.EdgeID, t.seq
	b, err := m.Marshal()
	if err != nil {
		t.log.Error("encode presence event", "err", err)
		return
	}
	if err := t.nc.Publish(pjs.PresenceEdgeSubject(t.cfg.EdgeID, m.Kind), b); err != nil {
		t.log.Debug("publish presence event", "kind", m.Kind, "err", err)
	}
}

func (t *presenceTracker) connected(c *Conn)           { t.change(c, "", 1) }
func (t *presenceTracker) joined(c *Conn, room string) { t.change(c, room, 1) }
func (t *presenceTracker) left(c *Conn, room string)   { t.change(c, room, -1) }

// disconnected ends every room presence of c, then its connection.
func (t *presenceTracker) disconnected(c *Conn) {
	for room := range c.rooms {
		t.change(c, room, -1)
	}
	t.change(c, "", -1)
}

func (t *presenceTracker) change(c *Conn, room string, delta int) {
	user := c.ident.User
	k := presenceKey{room, user}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	lc := t.counts[k]
	old := 0
	if lc != nil {
		old = lc.conns
	}
	n := max(old+delta, 0)
	if n == old {
		return
	}
	if old > 0 {
		t.digest ^= pjs.PresenceEntryHash(room, user, old)
	}
	switch {
	case n == 0:
		delete(t.counts, k)
	case lc == nil:
		lc = &localCount{conns: n, since: time.Now().UnixMilli()}
		t.counts[k] = lc
	default:
		lc.conns = n
	}
	var since int64
	if n > 0 {
		t.digest ^= pjs.PresenceEntryHash(room, user, n)
		since = lc.since
	}
	kind := pjs.PresenceKindConnect
	switch {
	case room != "" && delta > 0:
		kind = pjs.PresenceKindJoin
		t.addListener(room, c)
	case room != "":
		kind = pjs.PresenceKindLeave
		t.removeListener(room, c)
	case delta < 0:
		kind = pjs.PresenceKindDisconnect
	}
	t.seq++
	t.publishLocked(pjs.PresenceEdgeMsg{Kind: kind, Room: room, User: user, Conns: n, Since: since})
}

// addListener puts c among room's push receivers, subscribing the edge to
// the room's announcements with its first local member. The subscription
// is registered before the join event goes out on the same connection, so
// the member's own join announcement reaches it.
func (t *presenceTracker) addListener(room string, c *Conn) {
	pr := t.rooms[room]
	if pr == nil {
		pr = &presenceRoom{conns: make(map[*Conn]struct{})}
		// On the edge's shared dispatch shards, not a goroutine per room;
		// pushes are at most once: a burst beyond a shard's buffer is
		// dropped rather than held in memory.
		unsub, err := t.shards.subscribe(t.nc, pjs.PresenceRoomSubject(room), t.onAnnouncement(room))
		if err != nil {
			t.log.Warn("subscribe presence announcements", "room", room, "err", err)
		} else {
			pr.unsub = unsub
		}
		t.rooms[room] = pr
	}
	pr.conns[c] = struct{}{}
}

func (t *presenceTracker) removeListener(room string, c *Conn) {
	pr := t.rooms[room]
	if pr == nil {
		return
	}
	delete(pr.conns, c)
	if len(pr.conns) == 0 {
		if pr.unsub != nil {
			pr.unsub()
		}
		delete(t.rooms, room)
	}
}

// onAnnouncement forwards a worker's join/leave of room to the local
// members of room. Anyone may publish on the subject, so it is re-encoded
// from validated fields rather than passed through.
func (t *presenceTracker) onAnnouncement(room string) nats.MsgHandler {
	return func(m *nats.Msg) {
		var a pjs.PresenceAnnouncement
		if err := json.Unmarshal(m.Data, &a); err != nil || a.Room != room || !protocol.ValidName(a.User) ||
			(a.Op != protocol.OpJoin && a.Op != protocol.OpLeave) {
			t.log.Debug("ignoring invalid presence announcement", "room", room)
			return
		}
		// Names are [A-Za-z0-9_-]: nothing to escape.
		frame := []byte(`{"op":"` + a.Op + `","room":"` + room + `","user":"` + a.User + `"}`)
		t.mu.Lock()
		pr := t.rooms[room]
		var conns []*Conn
		if pr != nil {
			conns = make([]*Conn, 0, len(pr.conns))
			for c := range pr.conns {
				conns = append(conns, c)
			}
		}
		t.mu.Unlock()
		for _, c := range conns {
			c.deliver(frame)
		}
	}
}

// onSync schedules one snapshot for however many workers ask at once.
func (t *presenceTracker) onSync(*nats.Msg) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped || t.syncing != nil {
		return
	}
	t.syncing = time.AfterFunc(syncDelay, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.syncing = nil
		if !t.stopped {
			t.snapshotLocked()
		}
	})
}

// snapshotLocked publishes every count in parts. Holding t.mu keeps events
// out from between the parts, so the snapshot is exactly the state at its
// sequence number.
func (t *presenceTracker) snapshotLocked() {
	items := make([]pjs.PresenceEntry, 0, min(len(t.counts), pjs.PresenceMaxSnapshotPart))
	part := 0
	flush := func(final bool) {
		m := pjs.PresenceEdgeMsg{Kind: pjs.PresenceKindSnapshot, Part: part, Final: final, Items: items}
		if final {
			m.Entries, m.Digest = len(t.counts), pjs.FormatPresenceDigest(t.digest)
		}
		t.publishLocked(m)
		part++
		items = items[:0]
	}
	for k, lc := range t.counts {
		items = append(items, pjs.PresenceEntry{Room: k.room, User: k.user, Conns: lc.conns, Since: lc.since})
		if len(items) == pjs.PresenceMaxSnapshotPart {
			flush(false)
		}
	}
	flush(true)
	t.log.Debug("sent presence snapshot", "entries", len(t.counts), "parts", part)
}

// presence handles "presence": the users in a room, asked of whichever
// presence worker answers first.
func (c *Conn) presence(req *protocol.Request) error {
	if err := protocol.CheckName("room", req.Room); err != nil {
		return err
	}
	if !c.ident.CanSubscribe(req.Room) {
		return fmt.Errorf("%w: your token does not allow room %s", protocol.ErrForbidden, req.Room)
	}
	t := c.e.presence
	work, done := c.workCtx(0)
	defer done()
	ctx, span := c.e.startSpan(clientTrace(work, req), tracing.SpanPresenceQuery, trace.SpanKindClient,
		tracing.AttrRoom.String(req.Room), tracing.AttrUser.String(c.ident.User))
	defer span.End()
	r, err := c.e.backend.PresenceQuery(ctx, pjs.PresenceQuery{Room: req.Room, Limit: t.cfg.MaxUsers})
	if err != nil {
		failSpan(span, err)
		return err
	}
	users := make([]string, 0, min(len(r.Users), t.cfg.MaxUsers))
	for _, u := range r.Users {
		if protocol.ValidName(u) && len(users) < t.cfg.MaxUsers {
			users = append(users, u)
		}
	}
	span.SetAttributes(tracing.AttrUsers.Int(len(users)))
	reply := protocol.Reply{ID: req.ID, OK: true, Room: req.Room, Users: users}
	if r.Total > len(users) {
		reply.Reason = fmt.Sprintf("%d users present; the first %d by name are listed", r.Total, len(users))
	}
	c.reply(reply)
	return nil
}
