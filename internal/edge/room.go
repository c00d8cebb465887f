package edge

import "sync"

// room is one topic's local fan-out: the subscribers on this edge and the
// position of the topic's live feed.
type room struct {
	topic string

	// Set once by the hub before subscribed is closed.
	subscribed  chan struct{}
	subErr      error
	unsubscribe func()
	refs        int // guarded by the hub shard's lock

	delivered func(n int)

	// serial orders the live feed's deliveries with resyncs after a NATS
	// reconnect: a repair and the next live message must not interleave.
	serial sync.Mutex

	mu sync.Mutex
	// lastSeq is the newest sequence this room has seen or looked up; the
	// live feed never goes backwards past it (duplicates are dropped).
	lastSeq uint64
	known   bool // lastSeq comes from a live message
	based   bool // lastSeq comes from reading the stream (before any live message)
	// repair reads the messages of a gap on the live feed from the stream.
	repair  func(topic string, from, upTo uint64) []Delivery
	members []*member
	index   map[subscriber]int
}

// member is one subscriber's state in a room. While syncing, deliveries are
// held in pending so the caller can reply first (and, for a resume, replay
// the stream) without a gap or a duplicate at the seam.
type member struct {
	s          subscriber
	floor      uint64 // deliver only sequences above it
	syncing    bool
	pending    []Delivery
	maxPending int
	overflow   bool
}

func newRoom(topic string, delivered func(int), repair func(string, uint64, uint64) []Delivery) *room {
	return &room{topic: topic, subscribed: make(chan struct{}), index: make(map[subscriber]int), delivered: delivered, repair: repair}
}

func (r *room) add(s subscriber, maxPending int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.index[s]; ok {
		return
	}
	r.index[s] = len(r.members)
	r.members = append(r.members, &member{s: s, syncing: true, maxPending: maxPending})
}

func (r *room) remove(s subscriber) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.index[s]
	if !ok {
		return
	}
	last := len(r.members) - 1
	r.members[i] = r.members[last]
	r.index[r.members[i].s] = i
	r.members[last] = nil
	r.members = r.members[:last]
	delete(r.index, s)
}

// position returns the room's last sequence as the live feed knows it, if
// it has seen a message since subscribing.
func (r *room) position() (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastSeq, r.known
}

// learn records a last sequence read from the stream while the live feed has
// not shown one yet. The lowest such reading wins: every subscriber started
// at or after it, and anything above it that the feed misses is a gap to
// repair, not a duplicate to drop.
func (r *room) learn(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.known {
		return
	}
	if !r.based || seq < r.lastSeq {
		r.lastSeq = seq
	}
	r.based = true
}

// start ends s's syncing state: frames (the reply, then any replayed
// messages) are delivered, then every held-back delivery after seq after,
// and from then on every live delivery after it. It reports false if s
// overflowed while syncing.
func (r *room) start(s subscriber, after uint64, frames ...[]byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.index[s]
	if !ok {
		return false
	}
	m := r.members[i]
	if m.overflow {
		return false
	}
	for _, f := range frames {
		s.deliver(f)
	}
	for _, d := range m.pending {
		if d.Seq > after {
			s.deliver(d.Frame)
		}
	}
	m.pending = nil
	m.floor = after
	m.syncing = false
	return true
}

// deliver takes one live message from the feed. It runs on the feed's
// goroutine for this topic, so deliveries of one topic are serialised. When
// the message's predecessor on the subject is not the last one this room
// delivered, RePublish lost something (a NATS reconnect, a slow subscription,
// a leader change): the missing messages are read from the stream and
// delivered first, so subscribers never see a hole.
func (r *room) deliver(d Delivery) {
	r.serial.Lock()
	defer r.serial.Unlock()
	r.mu.Lock()
	prev, anchored := r.lastSeq, r.known || r.based
	r.mu.Unlock()
	if anchored && d.LastSeq > prev && r.repair != nil {
		for _, m := range r.repair(r.topic, prev+1, d.LastSeq) {
			r.fanout(m)
		}
	}
	r.fanout(d)
}

func (r *room) fanout(d Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d.Seq <= r.lastSeq {
		return
	}
	r.lastSeq = d.Seq
	r.known = true
	n := 0
	for _, m := range r.members {
		switch {
		case m.syncing:
			if len(m.pending) >= m.maxPending {
				m.overflow = true
				m.pending = nil
				continue
			}
			if !m.overflow {
				m.pending = append(m.pending, d)
			}
		case d.Seq > m.floor:
			m.s.deliver(d.Frame)
			n++
		}
	}
	r.delivered(n)
}

// resync catches up after the live subscription was down (a NATS
// reconnect): whatever the stream stored past the room's last delivered
// sequence is read and delivered now rather than when the next live message
// would reveal the gap.
func (r *room) resync(last func(topic string) (uint64, bool)) {
	r.serial.Lock()
	defer r.serial.Unlock()
	r.mu.Lock()
	prev, anchored := r.lastSeq, r.known || r.based
	r.mu.Unlock()
	if !anchored || r.repair == nil {
		return
	}
	newest, ok := last(r.topic)
	if !ok || newest <= prev {
		return
	}
	for _, m := range r.repair(r.topic, prev+1, newest) {
		r.fanout(m)
	}
}
