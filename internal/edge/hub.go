package edge

import (
	"context"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// Delivery is one stored message on its way to the connections of a topic:
// its stream sequence, the sequence of the previous stored message on the
// same subject (what RePublish puts in Nats-Last-Sequence), and the push
// frame, encoded once for every connection.
type Delivery struct {
	Seq     uint64
	LastSeq uint64
	Frame   []byte
}

// subscriber receives frames. deliver never blocks: a subscriber whose queue
// is full disconnects itself (slow consumer) instead of slowing the room.
type subscriber interface {
	deliver(frame []byte)
}

const hubShards = 64

// Hub knows which local subscribers are in which topic and holds one feed
// subscription per topic, reference-counted by its subscribers. It is sharded
// by topic so that joins in different rooms do not contend on one lock.
type Hub struct {
	backend Backend
	reader  *streamReader
	log     *slog.Logger
	// ctx bounds the hub's own reads (gap repairs): the edge's lifetime.
	ctx      context.Context
	seed     maphash.Seed
	shards   [hubShards]hubShard
	observer hubObserver
	// recent is how many of a room's latest messages each room keeps for
	// resumes (room topics only: DMs and broadcasts are not resumed).
	recent int
	// cache bounds the bytes those messages hold, per room and in all.
	cache *recentCache
	// linger keeps such a room subscribed this long after its last member.
	linger time.Duration
}

// hubObserver lets the edge count what the hub does without the hub knowing
// about Prometheus.
type hubObserver struct {
	topicOpened func()
	topicClosed func()
	delivered   func(n int)
	// gapRepaired counts a gap closed (and the messages read back);
	// gapUnrepaired one that could not be (the stream no longer had the
	// messages, or NATS did not answer).
	gapRepaired   func(msgs int)
	gapUnrepaired func()
	// panicked hears of a panic on a room's repair goroutine.
	panicked func(v any)
}

type hubShard struct {
	mu    sync.Mutex
	rooms map[string]*room
}

// NewHub builds a hub over backend.
func NewHub(backend Backend, log *slog.Logger) *Hub {
	h := &Hub{backend: backend, reader: &streamReader{b: backend}, log: log, ctx: context.Background(), seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].rooms = make(map[string]*room)
	}
	h.observer = hubObserver{topicOpened: func() {}, topicClosed: func() {}, delivered: func(int) {},
		gapRepaired: func(int) {}, gapUnrepaired: func() {}, panicked: func(any) {}}
	h.limitCache(defaultRoomCacheBytes, defaultRoomCacheTotalBytes, new(atomic.Int64), func(float64) {}, func(float64) {})
	return h
}

// limitCache sets the byte bounds of the rooms' recent messages: perRoom for
// each room, total for all of them, counted in used; evictedRoom and
// evictedTotal count the messages each bound made a room drop. Call it
// before the first Join.
func (h *Hub) limitCache(perRoom, total int, used *atomic.Int64, evictedRoom, evictedTotal func(float64)) {
	h.cache = &recentCache{
		perRoom: int64(perRoom), total: int64(total), used: used,
		evictedRoom: evictedRoom, evictedTotal: evictedTotal,
		rooms: h.cachingRooms,
	}
}

// cachingRooms lists the rooms that keep recent messages, for the cache's
// reclaim; it holds one shard's lock at a time and no room's.
func (h *Hub) cachingRooms() []*room {
	var rooms []*room
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, r := range sh.rooms {
			if r.recentMax > 0 {
				rooms = append(rooms, r)
			}
		}
		sh.mu.Unlock()
	}
	return rooms
}

func (h *Hub) shard(topic string) *hubShard {
	return &h.shards[maphash.String(h.seed, topic)%hubShards]
}

// Join adds s to topic in the syncing state: deliveries for s are held back
// until the caller decides where s starts with room.start. The feed
// subscription exists when Join returns.
func (h *Hub) Join(topic string, s subscriber, maxPending int) (*room, error) {
	sh := h.shard(topic)
	sh.mu.Lock()
	r := sh.rooms[topic]
	creator := r == nil
	if creator {
		r = newRoom(topic, h.observer.delivered, h.repair, h.cache)
		r.onPanic = h.observer.panicked
		if strings.HasPrefix(topic, pjs.RoomPrefix) {
			r.recentMax = h.recent
		}
		sh.rooms[topic] = r
	}
	r.refs++
	sh.mu.Unlock()

	if creator {
		unsub, err := h.backend.Subscribe(topic, r.deliver)
		if err != nil {
			sh.mu.Lock()
			if sh.rooms[topic] == r {
				delete(sh.rooms, topic)
			}
			sh.mu.Unlock()
			r.subErr = err
			close(r.subscribed)
			return nil, err
		}
		r.unsubscribe = unsub
		h.observer.topicOpened()
		close(r.subscribed)
	} else {
		<-r.subscribed
		if r.subErr != nil {
			return nil, r.subErr
		}
	}
	r.add(s, maxPending)
	return r, nil
}

// roomLinger is how long a room that keeps recent messages stays subscribed
// after its last subscriber left: clients that all dropped at once (an edge
// restart nearby, a network blip) come back within it and resume from the
// room's memory instead of each reading the stream.
const roomLinger = 30 * time.Second

// Leave removes s from r and drops the feed subscription with the last one
// (after roomLinger for rooms that keep recent messages).
func (h *Hub) Leave(r *room, s subscriber) {
	r.remove(s)
	sh := h.shard(r.topic)
	sh.mu.Lock()
	r.refs--
	last := r.refs == 0
	sh.mu.Unlock()
	if !last {
		return
	}
	if r.recentMax > 0 && h.linger > 0 {
		time.AfterFunc(h.linger, func() { h.close(r) })
		return
	}
	h.close(r)
}

// close drops r's feed subscription if nobody joined it again.
func (h *Hub) close(r *room) {
	sh := h.shard(r.topic)
	sh.mu.Lock()
	owner := r.refs == 0 && sh.rooms[r.topic] == r
	if owner {
		delete(sh.rooms, r.topic)
	}
	sh.mu.Unlock()
	if !owner {
		return
	}
	// Nobody can join r any more: its recent messages go, and their bytes
	// back to the edge's bound (after unsubscribing, so that a delivery in
	// flight finds r closed and keeps nothing).
	if r.unsubscribe != nil {
		r.unsubscribe()
		h.observer.topicClosed()
	}
	r.release()
}

// Topics is the number of topics with a live feed subscription.
func (h *Hub) Topics() int {
	n := 0
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		n += len(sh.rooms)
		sh.mu.Unlock()
	}
	return n
}

// Resync makes every topic catch up with the stream, a few at a time; the
// edge calls it after a NATS reconnect.
func (h *Hub) Resync(ctx context.Context, workers int) {
	var rooms []*room
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.Lock()
		for _, r := range sh.rooms {
			rooms = append(rooms, r)
		}
		sh.mu.Unlock()
	}
	last := func(topic string) (uint64, bool) {
		seq, err := h.backend.LastSeq(ctx, topic)
		return seq, err == nil
	}
	work := make(chan *room)
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				r.resync(last)
			}
		}()
	}
	for _, r := range rooms {
		select {
		case work <- r:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
}

// maxRepair bounds one read of a gap repair; a larger gap takes several.
const maxRepair = 10_000

// repair returns the stored messages of topic with from <= seq <= upTo,
// the first maxRepair of them: what the live subscription missed (the room
// calls again for the rest). It is best effort: it logs and counts what it
// cannot read. It runs on the room's repair goroutine, never on a
// dispatcher.
func (h *Hub) repair(topic string, from, upTo uint64) []Delivery {
	// A replica answering Direct Get may trail the leader that republished:
	// retry briefly until the gap's last message (which exists: the live
	// message named it) is readable.
	var got []Delivery
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 50 * time.Millisecond)
		}
		if h.ctx.Err() != nil {
			// The edge is shutting down: nobody is owed the messages, and
			// this is no unrepaired gap to count or warn about.
			return nil
		}
		ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
		var more bool
		got, more, err = h.reader.readRange(ctx, topic, from, upTo, maxRepair)
		cancel()
		if err == nil && len(got) > 0 && (more || got[len(got)-1].Seq == upTo) {
			h.observer.gapRepaired(len(got))
			h.log.Info("repaired live gap", "topic", topic, "from", from, "to", upTo, "msgs", len(got))
			return got
		}
	}
	h.observer.gapUnrepaired()
	h.log.Warn("live gap not fully repaired", "topic", topic, "from", from, "to", upTo, "read", len(got), "err", err)
	return got
}
