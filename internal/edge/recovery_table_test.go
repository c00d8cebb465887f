package edge

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/metrics"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// memEdge is an edge on an in-memory backend, enough for the recovery
// logic: no listener, no NATS, no presence.
func memEdge(t *testing.T, m *memBackend, tweak func(*Config)) *Edge {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Logger, cfg.Insecure = slog.New(slog.DiscardHandler), true
	if tweak != nil {
		tweak(&cfg)
	}
	cfg.fillDefaults()
	e := &Edge{cfg: cfg, log: cfg.Logger, backend: m, reader: &streamReader{b: m}, registry: metrics.NewRegistry(), ctx: t.Context()}
	e.metrics = metrics.NewEdge(e.registry)
	e.hub = NewHub(m, e.log)
	e.hub.recent = cfg.RoomCache
	return e
}

// fill stores n messages in room, each followed by one of another room,
// so that the room's seqs are not contiguous; it returns the room's seqs.
func fill(m *memBackend, room string, n int) []uint64 {
	var seqs []uint64
	for i := range n {
		seqs = append(seqs, m.store(pjs.RoomSubject(room), "msg"))
		m.store(pjs.RoomSubject("noise"), "other")
		_ = i
	}
	return seqs
}

func frameSeq(t *testing.T, f []byte) uint64 {
	t.Helper()
	var msg protocol.Msg
	if err := json.Unmarshal(f, &msg); err != nil || msg.Op != protocol.OpMsg {
		t.Fatalf("not a msg push: %s (%v)", f, err)
	}
	return msg.Seq
}

// resumeIn runs what a sub with since or last does up to the live seam —
// the room's position, the plan, and a long plan's read through the cursor
// — and returns the reply and the seqs the client would get before live
// messages. It reports the room's Fetch calls made meanwhile.
func resumeIn(t *testing.T, e *Edge, m *memBackend, room string, req protocol.Request) (protocol.Reply, []uint64, int) {
	t.Helper()
	ctx := context.Background()
	topic := pjs.RoomSubject(room)
	sub := &recordingSub{}
	r, err := e.hub.Join(topic, sub, e.cfg.MaxQueuedMsgs)
	if err != nil {
		t.Fatal(err)
	}
	defer e.hub.Leave(r, sub)
	m.mu.Lock()
	fetchesBefore := m.fetches[topic]
	m.mu.Unlock()
	upTo, known := r.position()
	if !known {
		if upTo, err = e.backend.LastSeq(ctx, topic); err != nil {
			t.Fatal(err)
		}
		r.learn(upTo)
	}
	reply := protocol.Reply{}
	c := &Conn{e: e}
	plan, err := c.recover(ctx, r, upTo, &req, &reply)
	if err != nil {
		t.Fatalf("recover: %v", err)
	}
	var got []uint64
	if plan != nil {
		for _, d := range plan.msgs {
			got = append(got, frameSeq(t, d.Frame))
		}
		if plan.long {
			through := *req.Since
			if len(got) > 0 {
				through = got[len(got)-1]
			}
			if plan.complete {
				through = max(through, upTo)
			}
			cur := &streamCursor{b: e.backend, reader: e.reader, topic: topic}
			defer cur.close()
			for through < upTo {
				d, err := cur.next(ctx, through)
				if err != nil {
					t.Fatalf("cursor after %d: %v", through, err)
				}
				got = append(got, frameSeq(t, d.Frame))
				through = d.Seq
			}
		}
	}
	m.mu.Lock()
	fetched := m.fetches[topic] - fetchesBefore
	m.mu.Unlock()
	return reply, got, fetched
}

// The recovery cases, each on a fresh in-memory stream: every way a room's
// messages can be where a resume needs them (the room's memory, the stream,
// the archive) or gone, and what the reply may claim then. A
// recovered:true must deliver every message of the room after since,
// once, in order; a recovered:false must say why and deliver a tail of
// them without a hole.
func TestRecoveryCases(t *testing.T) {
	type setup struct {
		since uint64 // since (0 with last)
		last  int
	}
	const room = "lobby"
	topic := pjs.RoomSubject(room)
	cases := []struct {
		name string
		cfg  func(*Config)
		// cached keeps the room subscribed while the messages arrive, so
		// its memory holds them.
		cached    bool
		prepare   func(m *memBackend, seqs []uint64) setup
		n         int
		recovered bool
		reason    string // a part of the reason when not recovered
		// fromMemory: no stream read at all.
		fromMemory bool
	}{
		{name: "within the room's memory", cached: true, n: 10, recovered: true, fromMemory: true,
			prepare: func(m *memBackend, s []uint64) setup { return setup{since: s[2]} }},
		{name: "within the stream", n: 10, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup { return setup{since: s[2]} }},
		{name: "nothing missed", n: 10, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup { return setup{since: s[9]} }},
		{name: "from the room's first message", n: 10, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup { return setup{since: 0} }},
		{name: "other rooms' messages removed only", n: 10, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup {
				m.keepLast(pjs.RoomSubject("noise"), 0)
				return setup{since: s[2]}
			}},
		{name: "per-subject cut, archive covers it", n: 20, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup {
				m.archiveThrough(m.lastSeq)
				m.keepLast(topic, 5)
				return setup{since: s[1]}
			}},
		{name: "per-subject cut, archive behind", n: 20, recovered: false, reason: "no longer holds",
			prepare: func(m *memBackend, s []uint64) setup {
				m.archiveThrough(s[7])
				m.keepLast(topic, 5)
				return setup{since: s[1]}
			}},
		{name: "per-subject cut, no archive", n: 20, recovered: false, reason: "no longer holds",
			prepare: func(m *memBackend, s []uint64) setup {
				m.keepLast(topic, 5)
				return setup{since: s[1]}
			}},
		{name: "purge of the whole room, archive covers it", n: 10, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup {
				m.archiveThrough(m.lastSeq)
				m.keepLast(topic, 0)
				return setup{since: s[1]}
			}},
		{name: "past retention, archive covers it", n: 20, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup {
				m.archiveThrough(m.lastSeq)
				m.dropBelow(s[10])
				return setup{since: s[1]}
			}},
		{name: "past retention, no archive", n: 20, recovered: false, reason: "no longer holds",
			prepare: func(m *memBackend, s []uint64) setup {
				m.dropBelow(s[10])
				return setup{since: s[1]}
			}},
		{name: "past retention, archive lost what left before it read it", n: 20, recovered: false, reason: "no longer holds",
			prepare: func(m *memBackend, s []uint64) setup {
				m.dropBelow(s[5])
				m.archiveThrough(m.lastSeq) // too late for s[2..4]
				m.dropBelow(s[10])
				return setup{since: s[1]}
			}},
		{name: "stream reset", n: 5, recovered: false, reason: "reset",
			prepare: func(m *memBackend, s []uint64) setup { return setup{since: m.lastSeq + 100} }},
		{name: "since beyond the room's newest, within the stream", n: 5, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup { return setup{since: m.lastSeq} }},
		{name: "long: more than max-recover, all in the stream", n: 60, recovered: true,
			cfg:     func(c *Config) { c.MaxRecover = 10 },
			prepare: func(m *memBackend, s []uint64) setup { return setup{since: s[0]} }},
		{name: "long across a cut the archive covers", n: 60, recovered: false, reason: "more than 10",
			cfg: func(c *Config) { c.MaxRecover = 10 },
			prepare: func(m *memBackend, s []uint64) setup {
				m.archiveThrough(m.lastSeq)
				m.keepLast(topic, 30)
				return setup{since: s[0]}
			}},
		{name: "last from the room's memory", cached: true, n: 10, recovered: true, fromMemory: true,
			prepare: func(m *memBackend, s []uint64) setup { return setup{last: 3} }},
		{name: "last from the stream", n: 10, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup { return setup{last: 3} }},
		{name: "last reaching into the archive", n: 20, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup {
				m.archiveThrough(m.lastSeq)
				m.keepLast(topic, 5)
				return setup{last: 8}
			}},
		{name: "last across a cut nothing covers", n: 20, recovered: false, reason: "left the stream",
			prepare: func(m *memBackend, s []uint64) setup {
				m.keepLast(topic, 5)
				return setup{last: 8}
			}},
		{name: "last of more than the room ever had", n: 4, recovered: true,
			prepare: func(m *memBackend, s []uint64) setup { return setup{last: 10} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemBackend()
			e := memEdge(t, m, tc.cfg)
			if tc.cached {
				keeper := &recordingSub{}
				r, err := e.hub.Join(topic, keeper, 1000)
				if err != nil {
					t.Fatal(err)
				}
				defer e.hub.Leave(r, keeper)
				r.learn(0)
				r.start(keeper, 0)
			}
			seqs := fill(m, room, tc.n)
			s := tc.prepare(m, seqs)
			req := protocol.Request{Op: protocol.OpSub, Room: room}
			if s.last > 0 {
				req.Last = &s.last
			} else {
				req.Since = &s.since
			}
			upTo, _ := m.LastSeq(context.Background(), topic)
			var truth []uint64
			if s.last > 0 {
				truth = m.roomSeqs(topic, 0, upTo)
				truth = truth[max(0, len(truth)-s.last):]
			} else {
				truth = m.roomSeqs(topic, s.since, upTo)
			}
			reply, got, fetched := resumeIn(t, e, m, room, req)
			if reply.Recovered == nil {
				t.Fatal("no recovered in the reply")
			}
			if *reply.Recovered != tc.recovered {
				t.Fatalf("recovered %v (reason %q), want %v; got %v of %v", *reply.Recovered, reply.Reason, tc.recovered, got, truth)
			}
			if tc.recovered {
				if !slices.Equal(got, truth) && !(len(got) == 0 && len(truth) == 0) {
					t.Fatalf("recovered:true delivered %v, want %v", got, truth)
				}
			} else {
				if !strings.Contains(reply.Reason, tc.reason) {
					t.Fatalf("reason %q, want it to say %q", reply.Reason, tc.reason)
				}
				// What is delivered is the newest part without a hole.
				if len(got) > 0 {
					i := slices.Index(truth, got[0])
					if i < 0 || !slices.Equal(got, truth[i:]) {
						t.Fatalf("recovered:false delivered %v, not a tail of %v", got, truth)
					}
				}
			}
			if tc.fromMemory && fetched != 0 {
				t.Fatalf("%d stream reads, want none (the room's memory holds it)", fetched)
			}
		})
	}
}

// history pages back through the stream and then the archive; a page the
// archive cannot vouch for says so.
func TestHistoryCases(t *testing.T) {
	const room = "lobby"
	topic := pjs.RoomSubject(room)
	cases := []struct {
		name    string
		prepare func(m *memBackend, s []uint64) (before uint64)
		limit   int
		want    func(s []uint64) []uint64
		missing bool
	}{
		{name: "newest from the stream", limit: 5,
			prepare: func(m *memBackend, s []uint64) uint64 { return 0 },
			want:    func(s []uint64) []uint64 { return s[len(s)-5:] }},
		{name: "before a seq", limit: 5,
			prepare: func(m *memBackend, s []uint64) uint64 { return s[10] },
			want:    func(s []uint64) []uint64 { return s[5:10] }},
		{name: "older than the stream holds, from the archive", limit: 10,
			prepare: func(m *memBackend, s []uint64) uint64 {
				m.archiveThrough(m.lastSeq)
				m.keepLast(topic, 5)
				return 0
			},
			want: func(s []uint64) []uint64 { return s[len(s)-10:] }},
		{name: "older than the stream holds, no archive", limit: 10, missing: true,
			prepare: func(m *memBackend, s []uint64) uint64 {
				m.keepLast(topic, 5)
				return 0
			},
			want: func(s []uint64) []uint64 { return s[len(s)-5:] }},
		{name: "the room's whole life, shorter than the page", limit: 50,
			prepare: func(m *memBackend, s []uint64) uint64 { return 0 },
			want:    func(s []uint64) []uint64 { return s }},
		{name: "archive behind a cut", limit: 10, missing: true,
			prepare: func(m *memBackend, s []uint64) uint64 {
				m.archiveThrough(s[5])
				m.keepLast(topic, 5)
				return 0
			},
			// The archive's newest 5 before the stream's part, then that part:
			// the stretch between is neither archived nor stored.
			want: func(s []uint64) []uint64 { return append(slices.Clone(s[1:6]), s[15:]...) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemBackend()
			e := memEdge(t, m, nil)
			seqs := fill(m, room, 20)
			before := tc.prepare(m, seqs)
			ctx := context.Background()
			ds, err := e.reader.latest(ctx, topic, before, tc.limit, 0)
			if err != nil {
				t.Fatal(err)
			}
			ds, missing := (&Conn{e: e}).historyFromArchive(ctx, room, before, tc.limit, ds)
			var got []uint64
			for _, d := range ds {
				got = append(got, frameSeq(t, d.Frame))
			}
			if want := tc.want(seqs); !slices.Equal(got, want) {
				t.Fatalf("history %v, want %v", got, want)
			}
			if (missing != "") != tc.missing {
				t.Fatalf("missing %q, want missing=%v", missing, tc.missing)
			}
		})
	}
}

// Any replica answers a stream read, and one that trails the leader (just
// back from a pause) answers with the past. Found by the chaos harness
// (SIGSTOP of a NATS node): a sub's position read from such a replica while
// the room's first live message arrived meanwhile was older than that
// message's predecessor, and the subscriber silently missed what lay
// between. Both reads of a sub must not skip anything: the position, and a
// resume's replay up to it.
func TestTrailingReplicaReadsSkipNothing(t *testing.T) {
	const room = "lobby"
	topic := pjs.RoomSubject(room)
	t.Run("position", func(t *testing.T) {
		m := newMemBackend()
		e := memEdge(t, m, nil)
		seqs := fill(m, room, 10)
		sub := &recordingSub{}
		r, err := e.hub.Join(topic, sub, 100)
		if err != nil {
			t.Fatal(err)
		}
		// The read of the room's newest answers from a replica that has
		// only the first 3, and a new message reaches the live feed first.
		var live uint64
		m.lag, m.lagReads = seqs[2], 1
		m.beforeLastSeq = func() { live = m.store(topic, "live") }
		seq, err := m.LastSeq(context.Background(), topic)
		if err != nil {
			t.Fatal(err)
		}
		pos := r.learn(seq)
		if pos != seqs[9] {
			t.Fatalf("position %d (read %d), want %d: the live message's predecessor", pos, seq, seqs[9])
		}
		r.start(sub, pos)
		got := []uint64{}
		for _, f := range sub.snapshot() {
			got = append(got, frameSeq(t, []byte(f)))
		}
		if !slices.Equal(got, []uint64{live}) {
			t.Fatalf("delivered %v after position %d, want [%d]", got, pos, live)
		}
	})
	t.Run("resume", func(t *testing.T) {
		m := newMemBackend()
		e := memEdge(t, m, nil)
		seqs := fill(m, room, 10)
		since := seqs[1]
		// The position is fresh, the first reads of the replay are not.
		m.lag, m.lagReads, m.lagFetchOnly = seqs[4], 3, true
		reply, got, _ := resumeIn(t, e, m, room, protocol.Request{Op: protocol.OpSub, Room: room, Since: &since})
		if want := seqs[2:]; reply.Recovered == nil || !*reply.Recovered || !slices.Equal(got, want) {
			t.Fatalf("recovered %v, got %v, want %v", reply.Recovered, got, want)
		}
	})
}

// A long replay whose cursor goes silent while the stream still holds what
// it owes starts a new cursor instead of waiting for ever. Found by the R3
// replay bench: an ordered consumer sometimes kept every owed message
// pending with no pull at the server, and the resume hung with the
// connection open.
func TestSilentReplayCursorIsReopened(t *testing.T) {
	m := newMemBackend()
	seqs := fill(m, "lobby", 5)
	m.stallCursors = 1
	cur := &streamCursor{b: m, reader: &streamReader{b: m}, topic: pjs.RoomSubject("lobby")}
	defer cur.close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var got []uint64
	after := uint64(0)
	for range seqs {
		d, err := cur.next(ctx, after)
		if err != nil {
			t.Fatalf("after %d: %v", after, err)
		}
		got = append(got, d.Seq)
		after = d.Seq
	}
	if !slices.Equal(got, seqs) || cur.reopened != 1 {
		t.Fatalf("got %v (reopened %d), want %v after one reopen", got, cur.reopened, seqs)
	}
}
