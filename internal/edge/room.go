package edge

import (
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"
)

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

	// live orders the feed's deliveries with gap repairs and resyncs, and
	// keeps repairs off the feed's dispatcher (shared by many topics and by
	// presence pushes): while a repair runs (repairing), the topic's live
	// messages wait in held, and the repair's goroutine delivers them after
	// the messages it read, in order. Without a repair running, a live
	// message is delivered on the dispatcher under live.
	live      sync.Mutex
	repairing bool
	held      []Delivery
	resyncDue func(topic string) (uint64, bool) // a resync asked for while repairing
	onPanic   func(v any)                       // a panic on a repair goroutine

	mu sync.Mutex
	// lastSeq is the newest sequence this room has seen or looked up; the
	// live feed never goes backwards past it (duplicates are dropped).
	lastSeq uint64
	known   bool // lastSeq comes from a live message
	based   bool // lastSeq comes from reading the stream (before any live message)
	// origin is the predecessor (Nats-Last-Sequence) of the first live
	// message when it came before any reading of the stream (not based):
	// the room has delivered every one of its messages after origin.
	origin uint64
	// repair reads the messages of a gap on the live feed from the stream.
	repair  func(topic string, from, upTo uint64) []Delivery
	members []*member
	// index finds a member in a room of more than indexFrom (nil below:
	// most rooms, every DM topic, are small, and a map per room cost more
	// than a scan of a few members).
	index map[subscriber]int

	// recent is the tail of the room's messages as this edge delivered them,
	// oldest first, without a hole: every message of the room with a seq
	// above recentFrom (up to lastSeq) is in it. Resumes and "last" are
	// served from it when they fall inside, so a mass reconnect to one room
	// reads the stream once (the live feed did), not once per client.
	// Dropping the oldest message moves recentFrom up to it.
	recent     []Delivery
	recentFrom uint64
	recentMax  int // messages; the byte bounds are in cache
	// recentBuf is the array recent is a window of (len == cap): the oldest
	// message is dropped by moving the window, and the live messages move
	// back to the front only when the window reaches the end, so keeping
	// the run costs no copy per message.
	recentBuf []Delivery
	// recentBytes is what the run holds, as counted in cache.used: each
	// message's entryCost and the array.
	recentBytes int64
	cache       *recentCache
	closed      bool // the hub let go of the room: keep nothing more
}

// recentCache bounds the bytes the rooms' recent runs hold, per room and on
// the whole edge, so that large messages in many rooms cannot fill the heap
// (a count bound alone let 256 messages of up to a MiB each stay in every
// room). Per room, the run's own lock is enough; across rooms, used is one
// atomic counter that a room reserves from before it keeps a message, so
// the delivery path takes no lock of the hub or of another room.
type recentCache struct {
	perRoom int64
	total   int64
	used    *atomic.Int64 // the bytes all runs hold; the gauge reads it
	// evictedRoom and evictedTotal count messages dropped from (or not
	// kept in) a run because of the per-room or the total byte bound.
	evictedRoom, evictedTotal func(float64)
	// rooms lists the hub's rooms that keep recent messages, for reclaim.
	rooms      func() []*room
	reclaiming atomic.Bool
}

// entryCost is what keeping d costs beyond its slot in the run's array: the
// frame's whole allocation (cap, not len: the cache keeps all of it alive)
// and a fixed allowance for the allocator's rounding of it, which covers
// frames up to 512 B (larger ones round up by less than a quarter).
func entryCost(d Delivery) int64 { return int64(cap(d.Frame)) + entryOverhead }

const (
	entryOverhead = 64
	// slotSize is one message's slot in a run's array.
	slotSize = int64(unsafe.Sizeof(Delivery{}))
	// minRecentSlots is the smallest array a run allocates.
	minRecentSlots = 8
	// Defaults of the byte bounds; see Config.RoomCacheBytes.
	defaultRoomCacheBytes      = 256 << 10
	defaultRoomCacheTotalBytes = 64 << 20
)

// reserve takes n bytes of the total bound (n <= 0 gives back), or reports
// false, taking nothing, if that would exceed it.
func (c *recentCache) reserve(n int64) bool {
	if n <= 0 {
		if n < 0 { // 0: a message replacing one of its size
			c.used.Add(n)
		}
		return true
	}
	for {
		cur := c.used.Load()
		if cur+n > c.total {
			return false
		}
		if c.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// evicted counts messages dropped by the per-room and the total bound.
func (c *recentCache) evicted(byRoom, byTotal int) {
	if byRoom > 0 {
		c.evictedRoom(float64(byRoom))
	}
	if byTotal > 0 {
		c.evictedTotal(float64(byTotal))
	}
}

// reclaim runs when a room had to drop its own messages (or not keep one)
// to stay within the total bound: it brings the total down to 7/8 of the
// bound so that the next messages fit without each room eating its own
// history, taking the oldest messages of the rooms that hold the most
// first (down to one level for all, max-min fair). Rooms with many large
// messages, busy or idle, pay; small rooms keep theirs. One reclaim runs at
// a time; a room that finds one running goes on, it already made room.
// It takes each room's lock in turn and never two at once.
func (c *recentCache) reclaim() {
	if !c.reclaiming.CompareAndSwap(false, true) {
		return
	}
	defer c.reclaiming.Store(false)
	if c.rooms == nil {
		return
	}
	rooms := c.rooms()
	sizes := make([]int64, len(rooms))
	for i, r := range rooms {
		sizes[i] = r.cachedBytes()
	}
	level, over := waterLevel(sizes, c.total-c.total/8)
	if !over {
		return
	}
	for i, r := range rooms {
		if sizes[i] > level {
			r.trimTo(level)
		}
	}
}

// waterLevel returns the largest level such that the sizes, each cut to
// it, sum to at most budget, and whether they exceed budget at all.
func waterLevel(sizes []int64, budget int64) (int64, bool) {
	sorted := slices.Clone(sizes)
	slices.Sort(sorted)
	var below int64 // the sum of the sizes under the level
	for i, s := range sorted {
		rest := int64(len(sorted) - i)
		if below+s*rest > budget {
			return (budget - below) / rest, true
		}
		below += s
	}
	return 0, false
}

// member is one subscriber's state in a room. While syncing, deliveries are
// held in pending so the caller can reply first (and, for a resume, replay
// the stream) without a gap or a duplicate at the seam.
//
// pending holds at most maxPending deliveries. When it is full its older
// half is dropped and dropped records the newest sequence dropped: pending
// then holds every delivery of the room after dropped, in order. A short
// sync (start) that ends at or above dropped loses nothing; one that ends
// below it cannot start (a slow consumer, as before). A long replay
// (handover) instead reads on from the stream until it has passed dropped,
// so a replay that outlasts maxPending live messages loses nothing and the
// memory held for it stays bounded.
type member struct {
	s          subscriber
	floor      uint64 // deliver only sequences above it
	syncing    bool
	pending    []Delivery
	maxPending int
	dropped    uint64
}

// hold keeps d for a syncing member, dropping the older half of pending
// when it is full.
func (m *member) hold(d Delivery) {
	if len(m.pending) >= m.maxPending {
		k := max(len(m.pending)/2, 1)
		m.dropped = m.pending[k-1].Seq
		n := copy(m.pending, m.pending[k:])
		clear(m.pending[n:]) // release the dropped frames
		m.pending = m.pending[:n]
	}
	m.pending = append(m.pending, d)
}

func newRoom(topic string, delivered func(int), repair func(string, uint64, uint64) []Delivery, cache *recentCache) *room {
	return &room{topic: topic, subscribed: make(chan struct{}), delivered: delivered, repair: repair, cache: cache}
}

// indexFrom is the room size from which members are found by index.
const indexFrom = 8

// indexOf finds s among the members (r.mu held).
func (r *room) indexOf(s subscriber) (int, bool) {
	if r.index != nil {
		i, ok := r.index[s]
		return i, ok
	}
	for i, m := range r.members {
		if m.s == s {
			return i, true
		}
	}
	return 0, false
}

func (r *room) add(s subscriber, maxPending int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.indexOf(s); ok {
		return
	}
	r.members = append(r.members, &member{s: s, syncing: true, maxPending: maxPending})
	switch {
	case r.index != nil:
		r.index[s] = len(r.members) - 1
	case len(r.members) > indexFrom:
		r.index = make(map[subscriber]int, len(r.members))
		for i, m := range r.members {
			r.index[m.s] = i
		}
	}
}

func (r *room) remove(s subscriber) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.indexOf(s)
	if !ok {
		return
	}
	last := len(r.members) - 1
	r.members[i] = r.members[last]
	r.members[last] = nil
	r.members = r.members[:last]
	if r.index != nil {
		delete(r.index, s)
		if i < last {
			r.index[r.members[i].s] = i
		}
		if len(r.members) <= indexFrom/2 {
			r.index = nil // small again: scan
		}
	}
	if len(r.members) == 0 {
		r.members = nil // an emptied large room lets go of its array
	}
}

// position returns the room's last sequence as the live feed knows it, if
// it has seen a message since subscribing or a reading of the stream taken
// after the subscription was in place (learn): every message stored after
// that reading reaches the room, so a later subscriber told the position
// misses nothing, and a connect storm into a room already subscribed on
// this edge costs no stream reading per subscriber.
func (r *room) position() (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastSeq, r.known || r.based
}

// learn records a last sequence read from the stream while the live feed has
// not shown one yet, and returns the position a subscriber that joined
// before the read may be told: every message of the room after it reaches
// that subscriber. The lowest reading wins: every subscriber started at or
// after it, and anything above it that the feed misses is a gap to repair,
// not a duplicate to drop. If the live feed got ahead while the caller
// read (its first message came first), the room delivers what follows that
// message's predecessor, and the reading may be older than that (a replica
// that trails the leader answered it): the position is then the
// predecessor, not the reading.
func (r *room) learn(seq uint64) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.known {
		if !r.based {
			return max(seq, r.origin)
		}
		return seq
	}
	if !r.based || seq < r.lastSeq {
		r.lastSeq = seq
	}
	r.based = true
	return seq
}

// start ends s's syncing state: frames (the reply, then any replayed
// messages) are delivered, then every held-back delivery after seq after,
// and from then on every live delivery after it. It reports false if s
// overflowed while syncing.
func (r *room) start(s subscriber, after uint64, frames ...[]byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.indexOf(s)
	if !ok {
		return false
	}
	m := r.members[i]
	if m.dropped > after {
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

// handoverState is what handover did.
type handoverState int

const (
	handoverDone   handoverState = iota // s is live: the replay is over
	handoverMore                        // a batch of pending went out; call again
	handoverBehind                      // pending lost messages after through: read the stream first
	handoverGone                        // s left the room
)

// handover ends a long replay that has delivered every message of the room
// up to through (at least the position the sub replied with). The live
// messages held for s meanwhile follow it: those after through, oldest
// first, at most maxMsgs and maxBytes of them per call (at least one), so
// that a replay that took long, with pending full, does not land thousands
// of messages in the connection's queue at once. When what is left fits,
// it goes out and s turns live in the same critical section as the room's
// fan-out: nothing is delivered twice or skipped at the seam.
//
// It returns the new through (the last pending message sent) and, for
// handoverBehind, pending's dropped mark: the replay must read the stream
// up to it before it calls again.
func (r *room) handover(s subscriber, through uint64, maxMsgs, maxBytes int) (handoverState, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, ok := r.indexOf(s)
	if !ok {
		return handoverGone, through
	}
	m := r.members[i]
	if m.dropped > through {
		return handoverBehind, m.dropped
	}
	k := 0 // pending[:k] is at or below through: the replay sent those
	for k < len(m.pending) && m.pending[k].Seq <= through {
		k++
	}
	n, size := k, 0
	for n < len(m.pending) && (n == k || (n-k < maxMsgs && size+len(m.pending[n].Frame) <= maxBytes)) {
		size += len(m.pending[n].Frame)
		n++
	}
	for _, d := range m.pending[k:n] {
		s.deliver(d.Frame)
		through = d.Seq
	}
	if n == len(m.pending) {
		m.pending = nil
		m.floor = through
		m.syncing = false
		return handoverDone, through
	}
	rest := copy(m.pending, m.pending[n:])
	clear(m.pending[rest:])
	m.pending = m.pending[:rest]
	return handoverMore, through
}

// deliver takes one live message from the feed, on the feed's dispatcher for
// this topic (deliveries of one topic arrive in order). When the message's
// predecessor on the subject is not the last one this room delivered,
// RePublish lost something (a NATS reconnect, a slow subscription, a leader
// change): the missing messages are read from the stream and delivered
// first, so subscribers never see a hole. That read may take seconds: it
// runs on a goroutine of the room's own (repairLoop) while this and later
// live messages wait, so that the dispatcher goes on with other topics.
func (r *room) deliver(d Delivery) {
	r.live.Lock()
	if r.repairing {
		r.hold(d)
		r.live.Unlock()
		return
	}
	if _, gap := r.gapBefore(d); !gap {
		r.fanout(d, d.LastSeq)
		r.live.Unlock()
		return
	}
	r.repairing = true
	r.held = append(r.held, d)
	r.live.Unlock()
	go r.repairLoop(nil)
}

// maxHeld bounds the live messages a room keeps while it repairs. Beyond
// it the oldest held one is dropped: the next one's predecessor then names
// it, so the repair reads it back from the stream like any other gap.
const maxHeld = maxRepair

// hold keeps d while a repair runs (under live).
func (r *room) hold(d Delivery) {
	if len(r.held) >= maxHeld {
		r.held[0] = Delivery{}
		r.held = r.held[1:]
	}
	r.held = append(r.held, d)
}

// gapBefore reports whether messages of the room are missing between the
// last one it delivered (prev) and d.
func (r *room) gapBefore(d Delivery) (prev uint64, gap bool) {
	r.mu.Lock()
	prev, anchored := r.lastSeq, r.known || r.based
	r.mu.Unlock()
	return prev, anchored && d.LastSeq > prev && r.repair != nil
}

// repairLoop owns the room's live delivery while it repairs: it catches up
// with the stream (when last is set: a resync), then delivers what was held,
// repairing each gap it shows, until nothing is held; then deliveries go
// back to the dispatcher. A panic ends the loop with the room's delivery
// handed back, not the process.
func (r *room) repairLoop(last func(topic string) (uint64, bool)) {
	defer func() {
		if v := recover(); v != nil {
			r.live.Lock()
			r.repairing, r.held, r.resyncDue = false, nil, nil
			r.live.Unlock()
			if r.onPanic != nil {
				r.onPanic(v)
			}
		}
	}()
	for {
		if last != nil {
			r.catchUp(last)
			last = nil
		}
		r.live.Lock()
		if len(r.held) == 0 {
			if r.resyncDue != nil {
				last, r.resyncDue = r.resyncDue, nil
				r.live.Unlock()
				continue
			}
			r.repairing, r.held = false, nil
			r.live.Unlock()
			return
		}
		d := r.held[0]
		r.held[0] = Delivery{}
		r.held = r.held[1:]
		r.live.Unlock()
		if prev, gap := r.gapBefore(d); gap {
			r.fill(prev, d.LastSeq)
		}
		r.fanout(d, d.LastSeq)
	}
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
	if r.fanoutLocked(d, pred) {
		r.cache.reclaim() // after unlocking: it takes other rooms' locks
	}
}

// fanoutLocked is fanout under the room's lock; it reports whether keeping
// d ran into the edge's total bound.
func (r *room) fanoutLocked(d Delivery, pred uint64) (squeezed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d.Seq <= r.lastSeq {
		return false
	}
	squeezed = r.remember(d, pred)
	if !r.known && !r.based {
		r.origin = pred
	}
	r.lastSeq = d.Seq
	r.known = true
	n := 0
	for _, m := range r.members {
		switch {
		case m.syncing:
			m.hold(d)
		case d.Seq > m.floor:
			m.s.deliver(d.Frame)
			n++
		}
	}
	r.delivered(n)
	return squeezed
}

// resync catches up after the live subscription was down (a NATS
// reconnect): whatever the stream stored past the room's last delivered
// sequence is read and delivered now rather than when the next live message
// would reveal the gap. It runs on the caller's goroutine (a resync
// worker), holding the room's live messages meanwhile; if a repair is
// running already, that repair's goroutine does it next.
func (r *room) resync(last func(topic string) (uint64, bool)) {
	r.live.Lock()
	if r.repairing {
		r.resyncDue = last
		r.live.Unlock()
		return
	}
	r.repairing = true
	r.live.Unlock()
	r.repairLoop(last)
}

// catchUp reads and delivers what the stream stored past the room's last
// delivered sequence (the room's delivery is the caller's).
func (r *room) catchUp(last func(topic string) (uint64, bool)) {
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
	r.fill(prev, newest)
}

// fill reads and delivers the room's messages after prev up to upTo, a
// bounded batch (maxRepair) at a time, so that a large gap (a burst that
// overflowed the live subscription) is filled whole without holding all of
// it in memory. It stops early only when the stream cannot give the next
// batch (counted and logged by the repair).
func (r *room) fill(prev, upTo uint64) {
	for prev < upTo {
		ds := r.repair(r.topic, prev+1, upTo)
		if len(ds) == 0 {
			return
		}
		r.fanoutRun(ds, prev)
		prev = ds[len(ds)-1].Seq
	}
}

// remember adds d to the recent run, or starts a new run when d does not
// follow its last message (a gap that could not be repaired). To stay
// within the room's bounds (recentMax messages, cache.perRoom bytes) and the
// edge's (cache.total bytes) it drops the run's oldest messages first; if d
// alone does not fit, the run keeps nothing and restarts after d. It
// reports whether the total bound made it drop anything: the caller then
// reclaims from the other rooms.
func (r *room) remember(d Delivery, pred uint64) (squeezed bool) {
	if r.recentMax <= 0 || r.closed {
		return false
	}
	var freed int64 // dropped from the run, not yet given back to cache.used
	if n := len(r.recent); n == 0 || r.recent[n-1].Seq != pred {
		freed += r.dropRun()
		r.recentFrom = pred
		if pred == 0 { // nothing stored before d on this subject
			r.recentFrom = d.Seq - 1
		}
	}
	cost := entryCost(d)
	var byRoom, byTotal int // messages dropped (or d not kept) by each bound
	for {
		if len(r.recent) < r.recentMax {
			need := cost + int64(r.slotsAfterPush()-len(r.recentBuf))*slotSize
			if r.recentBytes+need <= r.cache.perRoom {
				// One atomic operation per message: what the run takes
				// net of what it dropped for it.
				if r.cache.reserve(need - freed) {
					r.recentBytes += need
					r.push(d)
					r.cache.evicted(byRoom, byTotal)
					return squeezed
				}
				squeezed = true
				byTotal++
			} else {
				byRoom++
			}
		} // else: the count bound, the run's ordinary rolling
		if len(r.recent) == 0 { // d alone does not fit
			r.cache.reserve(-freed)
			r.recentFrom = d.Seq
			r.cache.evicted(byRoom, byTotal)
			return squeezed
		}
		freed += r.dropOldest()
	}
}

// slotsAfterPush is the length of the run's array once push has appended
// one more message: the same array while the window has room at its end or
// at least half of the array is free (push moves the run to its front),
// else a new one of twice the run.
func (r *room) slotsAfterPush() int {
	live := len(r.recent)
	if cap(r.recent) > live || (len(r.recentBuf) > 0 && 2*live <= len(r.recentBuf)) {
		return len(r.recentBuf)
	}
	return max(2*live, minRecentSlots)
}

// push appends d to the run, with the array slotsAfterPush says.
func (r *room) push(d Delivery) {
	if live := len(r.recent); cap(r.recent) == live {
		if len(r.recentBuf) > 0 && 2*live <= len(r.recentBuf) {
			n := copy(r.recentBuf, r.recent)
			clear(r.recentBuf[n:]) // the moved messages' old slots
			r.recent = r.recentBuf[:n]
		} else {
			buf := make([]Delivery, max(2*live, minRecentSlots))
			n := copy(buf, r.recent)
			r.recentBuf, r.recent = buf, buf[:n]
		}
	}
	r.recent = append(r.recent, d)
}

// dropOldest drops the run's oldest message, moving the run's start past
// it, and returns the bytes that frees; the caller gives them back to
// cache.used. The array goes with the last message, and shrinks when it is
// four times the run, so that a run cut down by large messages (or by
// reclaim) does not keep an array sized for the count bound.
func (r *room) dropOldest() int64 {
	d := r.recent[0]
	r.recent[0] = Delivery{} // release the frame
	r.recent = r.recent[1:]
	r.recentFrom = d.Seq
	freed := entryCost(d)
	switch live, slots := len(r.recent), len(r.recentBuf); {
	case live == 0:
		freed += int64(slots) * slotSize
		r.recent, r.recentBuf = nil, nil
	case slots > minRecentSlots && 4*live <= slots:
		buf := make([]Delivery, max(2*live, minRecentSlots))
		copy(buf, r.recent)
		freed += int64(slots-len(buf)) * slotSize
		r.recentBuf, r.recent = buf, buf[:live]
	}
	r.recentBytes -= freed
	return freed
}

// dropRun drops the whole run (not its start: the caller sets recentFrom)
// and returns the bytes that frees.
func (r *room) dropRun() int64 {
	freed := r.recentBytes
	r.recent, r.recentBuf, r.recentBytes = nil, nil, 0
	return freed
}

// cachedBytes is what the room's run holds.
func (r *room) cachedBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recentBytes
}

// trimTo drops the run's oldest messages until it holds at most level
// bytes (reclaim's share for it).
func (r *room) trimTo(level int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var freed int64
	n := 0
	for r.recentBytes > level && len(r.recent) > 0 {
		freed += r.dropOldest()
		n++
	}
	r.cache.reserve(-freed)
	r.cache.evicted(0, n)
}

// release drops the run for good when the hub closes the room, giving its
// bytes back to the edge's bound; a delivery still in flight keeps nothing.
func (r *room) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.cache != nil {
		r.cache.reserve(-r.dropRun())
	}
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
