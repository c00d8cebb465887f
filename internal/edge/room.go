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

	// recent is the tail of the room's messages as this edge delivered them,
	// oldest first, without a hole: every message of the room with a seq
	// above recentFrom (up to lastSeq) is in it. Resumes and "last" are
	// served from it when they fall inside, so a mass reconnect to one room
	// reads the stream once (the live feed did), not once per client.
	recent     []Delivery
	recentFrom uint64
	recentMax  int
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
		r.fanoutRun(r.repair(r.topic, prev+1, d.LastSeq), prev)
	}
	r.fanout(d, d.LastSeq)
}

// fanoutRun delivers messages read from the stream: all of the room's
// messages after seq after, in order.
func (r *room) fanoutRun(ds []Delivery, after uint64) {
	for _, d := range ds {
		r.fanout(d, after)
		after = d.Seq
	}
}

// fanout delivers d, whose predecessor among the room's stored messages is
// pred (0: none stored).
func (r *room) fanout(d Delivery, pred uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d.Seq <= r.lastSeq {
		return
	}
	r.remember(d, pred)
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
	r.fanoutRun(r.repair(r.topic, prev+1, newest), prev)
}

// remember adds d to the recent run, or starts a new run when d does not
// follow its last message (a gap that could not be repaired).
func (r *room) remember(d Delivery, pred uint64) {
	if r.recentMax <= 0 {
		return
	}
	if n := len(r.recent); n == 0 || r.recent[n-1].Seq != pred {
		clear(r.recent)
		r.recent = r.recent[:0]
		r.recentFrom = pred
		if pred == 0 { // nothing stored before d on this subject
			r.recentFrom = d.Seq - 1
		}
	}
	if len(r.recent) == 2*r.recentMax { // trim, amortised
		drop := len(r.recent) - r.recentMax + 1
		r.recentFrom = r.recent[drop-1].Seq
		n := copy(r.recent, r.recent[drop:])
		clear(r.recent[n:])
		r.recent = r.recent[:n]
	}
	r.recent = append(r.recent, d)
}

// since returns the room's messages after seq since up to upTo from the
// recent run, if the run covers since and holds at most max of them.
func (r *room) since(since, upTo uint64, max int) ([]Delivery, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.recent) == 0 || since < r.recentFrom || upTo > r.lastSeq {
		return nil, false
	}
	var out []Delivery
	for _, d := range r.recent {
		if d.Seq > since && d.Seq <= upTo {
			if len(out) == max {
				return nil, false
			}
			out = append(out, d)
		}
	}
	return out, true
}

// latest returns the room's n newest messages up to upTo from the recent
// run, if it holds that many (or the run reaches back to the room's start).
func (r *room) latest(n int, upTo uint64) ([]Delivery, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.recent) == 0 || upTo > r.lastSeq {
		return nil, false
	}
	end := len(r.recent)
	for end > 0 && r.recent[end-1].Seq > upTo {
		end--
	}
	if end < n {
		return nil, false
	}
	return append([]Delivery(nil), r.recent[end-n:end]...), true
}
