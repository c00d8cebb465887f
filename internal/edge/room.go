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

	mu sync.Mutex
	// lastSeq is the newest sequence this room has seen or looked up; the
	// live feed never goes backwards past it (duplicates are dropped).
	lastSeq uint64
	known   bool // lastSeq was read from the stream or a live message
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

func newRoom(topic string, delivered func(int)) *room {
	return &room{topic: topic, subscribed: make(chan struct{}), index: make(map[subscriber]int), delivered: delivered}
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

// position returns the room's known last sequence, if it has one.
func (r *room) position() (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastSeq, r.known
}

// learn records a sequence read from the stream as the room's position.
func (r *room) learn(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if seq > r.lastSeq {
		r.lastSeq = seq
	}
	r.known = true
}

// start ends s's syncing state: first (the reply) is delivered, then every
// held-back delivery after seq after, and from then on every live delivery
// after it. It reports false if s overflowed while syncing.
func (r *room) start(s subscriber, after uint64, first []byte) bool {
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
	if first != nil {
		s.deliver(first)
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

// deliver fans one live message out. It runs on the feed's goroutine for
// this topic, so deliveries of one topic are serialised and in order.
func (r *room) deliver(d Delivery) {
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
