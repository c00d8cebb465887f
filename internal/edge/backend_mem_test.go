package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// memBackend is a Backend in memory for table tests of the edge's logic: a
// stream of messages with stream-wide sequences that can lose a subject's
// oldest messages (per-subject limits, purges) or the stream's oldest (age,
// bytes), an archive that copies what the stream holds when told to and
// vouches exactly for what it copied, live subscriptions that can be made
// to miss messages, and slow or failing reads on demand. It follows the
// NATS semantics the edge relies on (Direct Get batches with num_pending,
// RePublish's Nats-Last-Sequence); the end-to-end tests run the same logic
// on a real nats-server.
type memBackend struct {
	mu      sync.Mutex
	lastSeq uint64
	stored  []memMsg          // in seq order
	subjLst map[string]uint64 // the last seq stored on each subject (RePublish's Last-Sequence)
	live    map[string][]*memSub
	// dropLive makes the live feed miss messages of a topic (lost
	// RePublishes); they stay in the stream.
	dropLive map[string]bool
	// archive: what the archiver copied, and every sequence it holds (a
	// message or a sequence it saw was never this room's: poison or not,
	// it is held). archiveOn false: no archive answers.
	archiveOn bool
	archived  map[uint64]memMsg
	held      map[uint64]bool
	// fetchHook runs before each Fetch (outside the lock): a test makes a
	// topic's reads slow with it.
	fetchHook func(topic string)
	fetches   map[string]int // Fetch calls per topic
	// A trailing replica: the next lagReads reads (Fetch, LastSeq) see
	// only what was stored up to seq lag. beforeLastSeq runs as LastSeq
	// starts (outside the lock): a test stores a message meanwhile.
	lag           uint64
	lagReads      int
	lagFetchOnly  bool // the trailing replica serves Fetch, not LastSeq (the leader does)
	beforeLastSeq func()
	presence      []string
	acks          ackFunc
	// stallCursors makes the next cursors opened deliver nothing, ever
	// (an ordered consumer whose pull the server no longer holds).
	stallCursors int
}

type memMsg struct {
	seq     uint64
	subject string
	frame   []byte
}

type memSub struct{ deliver func(Delivery) }

func newMemBackend() *memBackend {
	return &memBackend{subjLst: map[string]uint64{}, live: map[string][]*memSub{}, dropLive: map[string]bool{},
		archived: map[uint64]memMsg{}, held: map[uint64]bool{}, fetches: map[string]int{}}
}

// store appends a message to subject, returning its seq, and delivers it
// live unless the topic's live feed is set to drop.
func (m *memBackend) store(subject, text string) uint64 {
	return m.storeData(subject, func(seq uint64) []byte {
		return envelope("u", fmt.Sprintf("m%d", seq), []byte(fmt.Sprintf("%q", text)))
	})
}

// storeData stores the NATS payload data(seq) on subject, as store does.
func (m *memBackend) storeData(subject string, data func(seq uint64) []byte) uint64 {
	m.mu.Lock()
	m.lastSeq++
	seq := m.lastSeq
	msg := memMsg{seq: seq, subject: subject, frame: encodeStored(seq, int64(seq), data(seq), nil, pushTarget(subject))}
	m.stored = append(m.stored, msg)
	prev := m.subjLst[subject]
	m.subjLst[subject] = seq
	subs := slices.Clone(m.live[subject])
	drop := m.dropLive[subject]
	m.mu.Unlock()
	if !drop {
		for _, s := range subs {
			s.deliver(Delivery{Seq: seq, LastSeq: prev, Frame: msg.frame})
		}
	}
	return seq
}

// keepLast removes subject's oldest messages beyond n (a per-subject limit
// or a purge with keep), the stream's first sequence staying where it is
// when other subjects hold older ones.
func (m *memBackend) keepLast(subject string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	count := 0
	for _, s := range m.stored {
		if s.subject == subject {
			count++
		}
	}
	m.stored = slices.DeleteFunc(m.stored, func(s memMsg) bool {
		if s.subject == subject && count > n {
			count--
			return true
		}
		return false
	})
}

// dropBelow removes every message with seq < seq (age or byte limits).
func (m *memBackend) dropBelow(seq uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stored = slices.DeleteFunc(m.stored, func(s memMsg) bool { return s.seq < seq })
}

// archiveThrough makes the archive copy every stored message with seq <=
// through and hold those sequences; sequences already gone from the stream
// are holes in what it can vouch for.
func (m *memBackend) archiveThrough(through uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.archiveOn = true
	for _, s := range m.stored {
		if s.seq <= through {
			m.archived[s.seq] = s
			m.held[s.seq] = true
		}
	}
}

// roomSeqs is every seq of subject ever stored after since (the truth a
// resume must deliver), from the stream and the archive.
func (m *memBackend) roomSeqs(subject string, since, upTo uint64) []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	set := map[uint64]bool{}
	for _, s := range m.stored {
		if s.subject == subject && s.seq > since && s.seq <= upTo {
			set[s.seq] = true
		}
	}
	for _, s := range m.archived {
		if s.subject == subject && s.seq > since && s.seq <= upTo {
			set[s.seq] = true
		}
	}
	out := []uint64{}
	for s := range set {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func (m *memBackend) Subscribe(topic string, deliver func(Delivery)) (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &memSub{deliver: deliver}
	m.live[topic] = append(m.live[topic], s)
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.live[topic] = slices.DeleteFunc(m.live[topic], func(x *memSub) bool { return x == s })
	}, nil
}

// visibleLocked reports whether a read sees s (a trailing replica may not).
func (m *memBackend) visibleLocked(s memMsg) bool { return m.lagReads == 0 || s.seq <= m.lag }

// readDoneLocked counts one read against a trailing replica's lag.
func (m *memBackend) readDoneLocked() {
	if m.lagReads > 0 {
		m.lagReads--
	}
}

func (m *memBackend) LastSeq(_ context.Context, topic string) (uint64, error) {
	if h := m.beforeLastSeq; h != nil {
		h()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.lagFetchOnly {
		defer m.readDoneLocked()
	}
	for i := len(m.stored) - 1; i >= 0; i-- {
		if m.stored[i].subject == topic && (m.lagFetchOnly || m.visibleLocked(m.stored[i])) {
			return m.stored[i].seq, nil
		}
	}
	return 0, nil
}

func (m *memBackend) Fetch(_ context.Context, topic string, from uint64, batch int) ([]Delivery, uint64, error) {
	if h := m.fetchHook; h != nil {
		h(topic)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fetches[topic]++
	defer m.readDoneLocked()
	var out []Delivery
	var pending uint64
	for _, s := range m.stored {
		if s.subject != topic || s.seq < from || !m.visibleLocked(s) {
			continue
		}
		if len(out) < batch {
			out = append(out, Delivery{Seq: s.seq, Frame: s.frame})
		} else {
			pending++
		}
	}
	if len(out) == 0 {
		return nil, 0, errNoMessages
	}
	return out, pending, nil
}

func (m *memBackend) StreamState(context.Context) (StreamState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.stored) == 0 {
		return StreamState{FirstSeq: m.lastSeq + 1, LastSeq: m.lastSeq}, nil
	}
	first := m.stored[0].seq
	return StreamState{FirstSeq: first, LastSeq: m.lastSeq, NumDeleted: m.lastSeq - first + 1 - uint64(len(m.stored))}, nil
}

func (m *memBackend) Holds(_ context.Context, from, to uint64) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	have := map[uint64]bool{}
	for _, s := range m.stored {
		have[s.seq] = true
	}
	for s := from; s <= to; s++ {
		if !have[s] {
			return false, nil
		}
	}
	return true, nil
}

func (m *memBackend) OpenCursor(_ context.Context, topic string, after uint64, _ time.Duration) (Cursor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	stalled := m.stallCursors > 0
	if stalled {
		m.stallCursors--
	}
	return &memCursor{m: m, topic: topic, pos: after, stalled: stalled}, nil
}

type memCursor struct {
	m       *memBackend
	topic   string
	pos     uint64
	stalled bool
}

func (c *memCursor) Next(wait time.Duration) (Delivery, error) {
	if c.stalled {
		time.Sleep(min(wait, 5*time.Millisecond))
		return Delivery{}, errCursorIdle
	}
	c.m.mu.Lock()
	for _, s := range c.m.stored {
		if s.subject == c.topic && s.seq > c.pos {
			c.pos = s.seq
			c.m.mu.Unlock()
			return Delivery{Seq: s.seq, Frame: s.frame}, nil
		}
	}
	c.m.mu.Unlock()
	time.Sleep(min(wait, 5*time.Millisecond))
	return Delivery{}, errCursorIdle
}

func (c *memCursor) Close() {}

// ArchiveHistory follows docs/archiver.md: the newest Limit before Before,
// or with After the oldest Limit after it, and the coverage of the stretch.
func (m *memBackend) ArchiveHistory(_ context.Context, req pjs.ArchiveHistoryRequest) (*pjs.ArchiveHistoryResponse, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.archiveOn {
		return nil, errNoArchive
	}
	subject := pjs.RoomSubject(req.Room)
	var match []memMsg
	for _, s := range m.archived {
		if s.subject == subject && (req.Before == 0 || s.seq < req.Before) && (req.After == nil || s.seq > *req.After) {
			match = append(match, s)
		}
	}
	slices.SortFunc(match, func(a, b memMsg) int { return int(a.seq) - int(b.seq) })
	resp := &pjs.ArchiveHistoryResponse{Msgs: []json.RawMessage{}}
	limit := req.Limit
	if len(match) > limit {
		resp.More = true
		if req.After != nil {
			match = match[:limit]
		} else {
			match = match[len(match)-limit:]
		}
	}
	var after uint64
	switch {
	case req.After != nil:
		after = *req.After
	case resp.More && len(match) > 0:
		after = match[0].seq
	}
	through := after
	for m.held[through+1] && (req.Before == 0 || through+1 < req.Before) {
		through++
	}
	resp.Covered = &pjs.ArchiveCoverage{After: after, Through: through}
	for _, s := range match {
		resp.Msgs = append(resp.Msgs, s.frame)
	}
	return resp, nil
}

func (m *memBackend) PresenceQuery(_ context.Context, q pjs.PresenceQuery) (*pjs.PresenceQueryReply, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return &pjs.PresenceQueryReply{Users: slices.Clone(m.presence), Total: len(m.presence)}, nil
}

func (m *memBackend) Publish(token uint64, subject, _ string, data []byte, _ traceHeaders) error {
	// data is already the envelope the publisher built.
	seq := m.storeData(subject, func(uint64) []byte { return data })
	if m.acks != nil {
		go m.acks(token, seq, false, nil)
	}
	return nil
}

func (m *memBackend) Connected() bool { return true }
