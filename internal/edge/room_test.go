package edge

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pjs "github.com/parley-mesh/parley/jetstream"
)

type recordingSub struct {
	mu     sync.Mutex
	frames []string
}

func (r *recordingSub) deliver(b []byte) {
	r.mu.Lock()
	r.frames = append(r.frames, string(b))
	r.mu.Unlock()
}

func (r *recordingSub) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.frames)
}

// A live message whose Nats-Last-Sequence is ahead of the room's last
// delivered seq triggers a repair, delivered before it; duplicates and
// replays of old seqs are dropped; a subscriber starting at a position
// gets only what follows it, including what arrived while it synced.
func TestRoomGapRepairAndSeam(t *testing.T) {
	var repaired [][2]uint64
	r := newRoom("chat.room.x", func(int) {}, func(_ string, from, upTo uint64) []Delivery {
		repaired = append(repaired, [2]uint64{from, upTo})
		return []Delivery{{Seq: 3, Frame: []byte("3")}}
	}, nil)
	early, late := &recordingSub{}, &recordingSub{}
	r.add(early, 10)
	r.learn(0)
	r.start(early, 0, []byte("reply-early"))

	r.deliver(Delivery{Seq: 1, LastSeq: 0, Frame: []byte("1")})
	r.add(late, 10) // syncing: held back
	r.deliver(Delivery{Seq: 5, LastSeq: 3, Frame: []byte("5")})
	r.deliver(Delivery{Seq: 5, LastSeq: 3, Frame: []byte("5")}) // duplicate
	r.deliver(Delivery{Seq: 6, LastSeq: 5, Frame: []byte("6")})
	settle(t, r) // the repair runs on a goroutine of its own
	r.start(late, 3, []byte("reply-late"))
	r.deliver(Delivery{Seq: 8, LastSeq: 6, Frame: []byte("8")})

	if !slices.Equal(repaired, [][2]uint64{{2, 3}}) {
		t.Fatalf("repairs %v, want [[2 3]]", repaired)
	}
	if want := []string{"reply-early", "1", "3", "5", "6", "8"}; !slices.Equal(early.frames, want) {
		t.Fatalf("early subscriber got %v, want %v", early.frames, want)
	}
	if want := []string{"reply-late", "5", "6", "8"}; !slices.Equal(late.frames, want) {
		t.Fatalf("late subscriber got %v, want %v", late.frames, want)
	}
}

// settle waits until r has no repair running: its live deliveries are done.
func settle(t testing.TB, r *room) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.live.Lock()
		busy := r.repairing
		r.live.Unlock()
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("room still repairing after 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPubAckDecode(t *testing.T) {
	for in, want := range map[string]pubAck{
		`{"stream":"PARLEY_CHAT","seq":42}`:                                 {Seq: 42},
		`{"stream":"PARLEY_CHAT","seq":7,"duplicate":true}`:                 {Seq: 7, Duplicate: true},
		`{"stream":"PARLEY_CHAT","domain":"hub","seq":9,"duplicate":false}`: {Seq: 9},
	} {
		var got pubAck
		if err := got.decode([]byte(in)); err != nil || got != want {
			t.Errorf("%s: %+v %v", in, got, err)
		}
	}
	var got pubAck
	if err := got.decode([]byte(`{"error":{"code":400,"err_code":10054,"description":"maximum message size exceeded"},"stream":"PARLEY_CHAT","seq":0}`)); err != nil ||
		got.Error == nil || got.Error.ErrorCode != 10054 {
		t.Errorf("error ack: %+v %v", got, err)
	}
}

// The room's recent messages serve a resume only when they cover it without
// a hole: a gap that could not be repaired starts a new run, and since
// before the run (or too many messages) goes to the stream.
func TestRoomRecentMessages(t *testing.T) {
	seqs := func(ds []Delivery) []uint64 {
		out := []uint64{}
		for _, d := range ds {
			out = append(out, d.Seq)
		}
		return out
	}
	r := newRoom("chat.room.x", func(int) {}, func(_ string, from, upTo uint64) []Delivery {
		return nil // the stream cannot fill any gap
	}, newTestCache(1<<20, 1<<20).recentCache)
	r.recentMax = 4
	r.learn(10)
	r.deliver(Delivery{Seq: 12, LastSeq: 10}) // follows the learned position
	r.deliver(Delivery{Seq: 15, LastSeq: 12})
	r.deliver(Delivery{Seq: 20, LastSeq: 15})
	if got, ok := r.since(10, 20, 100); !ok || !slices.Equal(seqs(got), []uint64{12, 15, 20}) {
		t.Fatalf("since 10: %v %v", seqs(got), ok)
	}
	if got, ok := r.since(13, 15, 100); !ok || !slices.Equal(seqs(got), []uint64{15}) {
		t.Fatalf("since 13 up to 15: %v %v", seqs(got), ok)
	}
	if _, ok := r.since(9, 20, 100); ok {
		t.Fatal("since 9 is before what the room holds")
	}
	if _, ok := r.since(10, 20, 2); ok {
		t.Fatal("more than max must go to the stream")
	}
	if got, ok := r.latest(2, 20); !ok || !slices.Equal(seqs(got), []uint64{15, 20}) {
		t.Fatalf("latest 2: %v %v", seqs(got), ok)
	}
	// 25's predecessor is 22, which never arrived and could not be repaired:
	// a new run starts at 22.
	r.deliver(Delivery{Seq: 25, LastSeq: 22})
	settle(t, r)
	if _, ok := r.since(20, 25, 100); ok {
		t.Fatal("served across an unrepaired gap")
	}
	if got, ok := r.since(22, 25, 100); !ok || !slices.Equal(seqs(got), []uint64{25}) {
		t.Fatalf("since 22 after the gap: %v %v", seqs(got), ok)
	}
	if _, ok := r.latest(2, 25); ok {
		t.Fatal("latest 2 reaches across the gap")
	}
	// The run is bounded: older messages are dropped and the run's start
	// moves with them.
	for s := uint64(26); s < 40; s++ {
		r.deliver(Delivery{Seq: s, LastSeq: s - 1})
	}
	if len(r.recent) > 2*r.recentMax {
		t.Fatalf("%d recent messages kept, bound %d", len(r.recent), 2*r.recentMax)
	}
	if _, ok := r.since(25, 39, 100); ok {
		t.Fatalf("served since 25 though the run now starts after %d", r.recentFrom)
	}
	if got, ok := r.since(36, 39, 100); !ok || !slices.Equal(seqs(got), []uint64{37, 38, 39}) {
		t.Fatalf("since 36: %v %v", seqs(got), ok)
	}
}

// testCache is a recentCache with its own counters, as the hub builds it.
type testCache struct {
	*recentCache
	used            atomic.Int64
	byRoom, byTotal atomic.Int64
}

func newTestCache(perRoom, total int64) *testCache {
	c := &testCache{}
	c.recentCache = &recentCache{
		perRoom: perRoom, total: total, used: &c.used,
		evictedRoom:  func(n float64) { c.byRoom.Add(int64(n)) },
		evictedTotal: func(n float64) { c.byTotal.Add(int64(n)) },
	}
	return c
}

// msgOf is a live delivery of seq after pred with a frame of size bytes.
func msgOf(seq, pred uint64, size int) Delivery {
	return Delivery{Seq: seq, LastSeq: pred, Frame: make([]byte, size)}
}

// checkRun fails unless r's recent run is hole-free up to the room's last
// seq and its byte count is what it holds: each message chains to the one
// before it (the first to recentFrom), the last is lastSeq, and
// recentBytes is the frames' cost plus the array.
func checkRun(t *testing.T, r *room) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	want := int64(len(r.recentBuf)) * slotSize
	prev := r.recentFrom
	for _, d := range r.recent {
		if d.LastSeq != prev {
			t.Fatalf("hole in the run: %d follows %d, its predecessor is %d", d.Seq, prev, d.LastSeq)
		}
		prev = d.Seq
		want += entryCost(d)
	}
	if len(r.recent) > 0 && prev != r.lastSeq {
		t.Fatalf("run ends at %d, room at %d", prev, r.lastSeq)
	}
	if r.recentBytes != want {
		t.Fatalf("run counts %d bytes, holds %d", r.recentBytes, want)
	}
	if len(r.recent) > r.recentMax {
		t.Fatalf("%d messages, bound %d", len(r.recent), r.recentMax)
	}
}

// checkResumes fails unless every resume the run covers is served exactly
// and every other one goes to the stream. stored is every message of the
// room, oldest first.
func checkResumes(t *testing.T, r *room, stored []uint64) {
	t.Helper()
	last := stored[len(stored)-1]
	from := r.recentFrom
	for i, since := range append([]uint64{0}, stored...) {
		got, ok := r.since(since, last, 1<<20)
		if since < from {
			if ok {
				t.Fatalf("since %d served though the run starts after %d", since, from)
			}
			continue
		}
		if since == last {
			continue // the edge answers that without the run
		}
		if !ok {
			t.Fatalf("since %d not served though the run starts after %d", since, from)
		}
		if want := stored[i:]; !slices.Equal(seqsOf(got), want) {
			t.Fatalf("since %d: got %v, want %v", since, seqsOf(got), want)
		}
	}
}

func seqsOf(ds []Delivery) []uint64 {
	out := []uint64{}
	for _, d := range ds {
		out = append(out, d.Seq)
	}
	return out
}

// A room's recent run never holds more than its byte bound, whatever the
// mix of message sizes: it drops its oldest messages first, stays
// hole-free, serves exactly the resumes it still covers and sends the
// others to the stream. A message larger than the bound on its own is not
// kept; the run restarts after it.
func TestRoomCacheByteBound(t *testing.T) {
	const perRoom = 64 << 10
	c := newTestCache(perRoom, 1<<30)
	r := newRoom("chat.room.x", func(int) {}, nil, c.recentCache)
	r.recentMax = 256
	rng := rand.New(rand.NewPCG(1, 2))
	var stored []uint64
	seq := uint64(0)
	for i := range 2000 {
		size := 100 + rng.IntN(400)
		switch {
		case i%97 == 0:
			size = perRoom + 1 // alone over the bound
		case i%5 == 0:
			size = 2000 + rng.IntN(6000)
		}
		pred := seq
		seq += 1 + uint64(rng.IntN(3)) // other subjects' messages between
		r.deliver(msgOf(seq, pred, size))
		stored = append(stored, seq)
		if r.recentBytes > perRoom {
			t.Fatalf("after %d: %d bytes cached, bound %d", seq, r.recentBytes, perRoom)
		}
		if got := c.used.Load(); got != r.recentBytes {
			t.Fatalf("after %d: the edge counts %d bytes, the room holds %d", seq, got, r.recentBytes)
		}
		checkRun(t, r)
		if i%10 == 0 || size > perRoom {
			checkResumes(t, r, stored)
		}
		if size > perRoom && len(r.recent) != 0 {
			t.Fatalf("kept a %d-byte message over the %d-byte bound", size, perRoom)
		}
	}
	if c.byRoom.Load() == 0 {
		t.Fatal("no evictions counted")
	}
	// Small messages again: once they have pushed the large ones out, the
	// count bound rolls the run, and that is no eviction.
	var before int64
	for i := range 600 {
		if i == 300 {
			before = c.byRoom.Load()
		}
		pred := seq
		seq++
		r.deliver(msgOf(seq, pred, 10))
		stored = append(stored, seq)
	}
	checkRun(t, r)
	checkResumes(t, r, stored)
	if len(r.recent) != r.recentMax || r.recentFrom != stored[len(stored)-r.recentMax-1] {
		t.Fatalf("run of %d from %d, want the latest %d", len(r.recent), r.recentFrom, r.recentMax)
	}
	if got := c.byRoom.Load(); got != before {
		t.Fatalf("%d evictions counted for the count bound's rolling", got-before)
	}
	// The array shrank back from what the large messages left.
	if slots := len(r.recentBuf); slots > 2*r.recentMax {
		t.Fatalf("array of %d slots for %d messages", slots, len(r.recent))
	}
	// "last" is served within the run and not beyond it.
	if got, ok := r.latest(3, seq); !ok || !slices.Equal(seqsOf(got), stored[len(stored)-3:]) {
		t.Fatalf("latest 3: %v %v", seqsOf(got), ok)
	}
	if _, ok := r.latest(r.recentMax+1, seq); ok {
		t.Fatal("latest beyond the run served")
	}
	r.release()
	if got := c.used.Load(); got != 0 || len(r.recent) != 0 {
		t.Fatalf("released room still counts %d bytes, %d messages", got, len(r.recent))
	}
	r.deliver(msgOf(seq+1, seq, 10)) // in flight while the hub closed it
	if got := c.used.Load(); got != 0 {
		t.Fatalf("closed room kept %d bytes", got)
	}
}

type nopSub struct{}

func (nopSub) deliver([]byte) {}

// Across many rooms the edge's total never exceeds its bound, even with
// rooms delivering in parallel; a room over budget makes room by dropping
// its own oldest messages and the reclaim then takes from the rooms that
// hold the most, so a small room keeps all of its messages. Every run stays
// hole-free, the counter is exactly what the runs hold, and it returns to 0
// when the rooms close.
func TestRoomCacheTotalBound(t *testing.T) {
	const (
		perRoom = 64 << 10
		total   = 512 << 10
		rooms   = 64
	)
	feed := &memFeed{delivers: map[string]func(Delivery){}}
	h := NewHub(feed, slog.New(slog.DiscardHandler))
	h.recent = 256
	var used, byTotal atomic.Int64
	h.limitCache(perRoom, total, &used, func(float64) {}, func(n float64) { byTotal.Add(int64(n)) })

	type joined struct {
		r      *room
		stored []uint64
	}
	all := make([]*joined, rooms)
	for i := range all {
		r, err := h.Join(fmt.Sprintf("chat.room.r%d", i), nopSub{}, 16)
		if err != nil {
			t.Fatal(err)
		}
		r.start(nopSub{}, 0)
		all[i] = &joined{r: r}
	}
	// The small room: a few small messages, before and after the big ones.
	small := all[0]
	for i := range 3 {
		seq := uint64(i + 1)
		small.r.deliver(msgOf(seq, seq-1, 50))
		small.stored = append(small.stored, seq)
	}
	// The hog: a room filled to its own bound, then idle. Only the reclaim
	// can take from it once the busy rooms fill the total.
	hog := all[1]
	for seq := uint64(1); hog.r.cachedBytes() < perRoom-8<<10; seq++ {
		hog.r.deliver(msgOf(seq, seq-1, 4000))
		hog.stored = append(hog.stored, seq)
	}

	stop := make(chan struct{})
	var maxSeen atomic.Int64
	watcher := make(chan struct{})
	go func() { // samples the counter while the rooms deliver
		defer close(watcher)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if u := used.Load(); u > maxSeen.Load() {
				maxSeen.Store(u)
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range 4 { // each worker owns some rooms: a room's feed is serial
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 300 {
				for i := 2 + w; i < rooms; i += 4 {
					j := all[i]
					var pred uint64
					if n := len(j.stored); n > 0 {
						pred = j.stored[n-1]
					}
					seq := pred + 1
					j.r.deliver(msgOf(seq, pred, 1000+rng.IntN(7000)))
					j.stored = append(j.stored, seq)
					if u := used.Load(); u > total {
						t.Errorf("%d bytes cached, bound %d", u, total)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-watcher
	if m := maxSeen.Load(); m > total {
		t.Fatalf("the counter reached %d, bound %d", m, total)
	}
	if byTotal.Load() == 0 {
		t.Fatal("the total bound never evicted")
	}
	var sum int64
	for _, j := range all {
		checkRun(t, j.r)
		checkResumes(t, j.r, j.stored)
		sum += j.r.cachedBytes()
	}
	if got := used.Load(); got != sum || got > total {
		t.Fatalf("the edge counts %d bytes, the rooms hold %d (bound %d)", got, sum, total)
	}
	if got, ok := small.r.since(0, 3, 100); !ok || !slices.Equal(seqsOf(got), small.stored) {
		t.Fatalf("the small room lost its messages to the large ones: %v %v", seqsOf(got), ok)
	}
	if got := hog.r.cachedBytes(); got > perRoom/4 {
		t.Fatalf("the idle room still holds %d bytes of the %d-byte total", got, total)
	}

	for _, j := range all {
		h.Leave(j.r, nopSub{}) // no linger: closes the room
	}
	if got := used.Load(); got != 0 {
		t.Fatalf("%d bytes still counted after every room closed", got)
	}
	if n := h.Topics(); n != 0 {
		t.Fatalf("%d topics still open", n)
	}
}

func TestWaterLevel(t *testing.T) {
	for _, tc := range []struct {
		sizes  []int64
		budget int64
		level  int64
		over   bool
	}{
		{[]int64{10, 20, 30}, 60, 0, false},
		{[]int64{10, 20, 30}, 59, 29, true},
		{[]int64{10, 20, 30}, 40, 15, true},
		{[]int64{10, 20, 30}, 29, 9, true},
		{[]int64{5, 100, 100, 100}, 95, 30, true},
		{nil, 10, 0, false},
	} {
		level, over := waterLevel(tc.sizes, tc.budget)
		if level != tc.level || over != tc.over {
			t.Errorf("waterLevel(%v, %d) = %d %v, want %d %v", tc.sizes, tc.budget, level, over, tc.level, tc.over)
		}
	}
}

// A syncing member's pending is bounded: when full its older half goes and
// the dropped mark says how far. A short sync ending below the mark cannot
// start (a slow consumer); a long replay's handover sends what pending
// holds after the replay, in batches, and reports the mark when the replay
// must read the stream further first. Across it all every seq after the
// replay's end arrives once, in order.
func TestRoomPendingBoundAndHandover(t *testing.T) {
	r := newRoom("chat.room.x", func(int) {}, nil, nil)
	live := func(from, to uint64) {
		for s := from; s <= to; s++ {
			r.deliver(Delivery{Seq: s, LastSeq: s - 1, Frame: []byte(fmt.Sprint(s))})
		}
	}
	r.learn(0)

	short := &recordingSub{}
	r.add(short, 4)
	live(1, 5) // 1..4 fill pending, 5 drops 1 and 2
	if r.start(short, 1) {
		t.Fatal("a sync ending at seq 1 started although pending dropped seq 2")
	}
	r.remove(short)

	long := &recordingSub{}
	r.add(long, 8)
	live(6, 20) // pending keeps a suffix: the mark is above 10
	st, mark := r.handover(long, 10, 100, 1<<20)
	if st != handoverBehind || mark <= 10 {
		t.Fatalf("handover at 10: %v %d, want behind with a mark above 10", st, mark)
	}
	// The replay reads the stream up to the mark, then pending takes over,
	// three messages per batch.
	var got []string
	for s := uint64(11); s <= mark; s++ {
		got = append(got, fmt.Sprint(s))
	}
	through := mark
	for {
		st, t2 := r.handover(long, through, 3, 1<<20)
		if st == handoverBehind || st == handoverGone {
			t.Fatalf("handover at %d: %v", through, st)
		}
		if st == handoverMore && t2 <= through {
			t.Fatalf("a batch that moved nothing: %d -> %d", through, t2)
		}
		through = t2
		if st == handoverDone {
			break
		}
		live(r.lastSeq+1, r.lastSeq+1) // live traffic between batches
	}
	live(r.lastSeq+1, r.lastSeq+2)
	got = append(got, long.frames...)
	var want []string
	for s := uint64(11); s <= r.lastSeq; s++ {
		want = append(want, fmt.Sprint(s))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("across the seam got %v, want %v", got, want)
	}
	if st, _ := r.handover(&recordingSub{}, 0, 1, 1); st != handoverGone {
		t.Fatalf("handover of a non-member: %v", st)
	}
}

// One room's gap repair must not delay another room's deliveries: live
// messages of many topics share a dispatcher goroutine, and a repair may
// wait seconds for the stream. Here room a's repair blocks until the test
// lets it go; room b's message, dispatched after it on the same goroutine,
// must arrive meanwhile, and room a's messages (the repaired one, the one
// that showed the gap and one more that came during the repair) must all
// follow in order once the repair ends.
func TestSlowRepairDoesNotDelayOtherRooms(t *testing.T) {
	m := newMemBackend()
	h := NewHub(m, slog.New(slog.DiscardHandler))
	topicA, topicB := pjs.RoomSubject("a"), pjs.RoomSubject("b")
	subA, subB := &recordingSub{}, &recordingSub{}
	for _, j := range []struct {
		topic string
		s     *recordingSub
	}{{topicA, subA}, {topicB, subB}} {
		r, err := h.Join(j.topic, j.s, 100)
		if err != nil {
			t.Fatal(err)
		}
		r.learn(0)
		r.start(j.s, 0)
	}
	release := make(chan struct{})
	m.fetchHook = func(topic string) {
		if topic == topicA {
			<-release
		}
	}
	m.dropLive[topicA] = true
	lost := m.store(topicA, "lost") // stored, its live copy lost
	m.dropLive[topicA] = false

	// The dispatcher: room a's next message reveals the gap, then room b's.
	dispatched := make(chan struct{})
	var showed, during uint64
	go func() {
		defer close(dispatched)
		showed = m.store(topicA, "shows the gap")
		m.store(topicB, "must not wait")
		during = m.store(topicA, "during the repair")
	}()
	select {
	case <-dispatched:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the dispatcher waited for room a's repair")
	}
	if got := subB.snapshot(); len(got) != 1 {
		t.Fatalf("room b got %d messages while room a repaired, want 1", len(got))
	}
	if got := subA.snapshot(); len(got) != 0 {
		t.Fatalf("room a delivered %d messages before its repair ended", len(got))
	}
	close(release)
	deadline := time.Now().Add(10 * time.Second)
	for len(subA.snapshot()) < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	var seqs []uint64
	for _, f := range subA.snapshot() {
		seqs = append(seqs, frameSeq(t, []byte(f)))
	}
	if want := []uint64{lost, showed, during}; !slices.Equal(seqs, want) {
		t.Fatalf("room a got %v, want %v", seqs, want)
	}
}

// A gap larger than one repair read (maxRepair) is filled whole, in
// batches: before, one read of 10,000 was all a gap got, and the rest of
// it was skipped without a word to the room's subscribers.
func TestLargeGapIsFilledWhole(t *testing.T) {
	m := newMemBackend()
	h := NewHub(m, slog.New(slog.DiscardHandler))
	topic := pjs.RoomSubject("burst")
	sub := &recordingSub{}
	r, err := h.Join(topic, sub, 100)
	if err != nil {
		t.Fatal(err)
	}
	r.learn(0)
	r.start(sub, 0)
	const missed = 2*maxRepair + 500
	m.dropLive[topic] = true // a burst that overflowed the live subscription
	for range missed {
		m.store(topic, "burst")
	}
	m.dropLive[topic] = false
	last := m.store(topic, "shows the gap")
	settle(t, r)
	got := sub.snapshot()
	if len(got) != missed+1 {
		t.Fatalf("delivered %d, want %d", len(got), missed+1)
	}
	for i, f := range got {
		if seq := frameSeq(t, []byte(f)); seq != uint64(i+1) {
			t.Fatalf("delivery %d has seq %d, want %d", i, seq, i+1)
		}
	}
	if seq := frameSeq(t, []byte(got[len(got)-1])); seq != last {
		t.Fatalf("last delivery seq %d, want %d", seq, last)
	}
}

// TestRoomMembershipAcrossTheIndexThreshold adds and removes members in a
// random order across indexFrom both ways (a small room scans, a large one
// has a map): every member present gets every message once, and nobody
// who left gets anything.
func TestRoomMembershipAcrossTheIndexThreshold(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	r := newRoom("chat.room.x", func(int) {}, nil, nil)
	r.learn(0)
	subs := make([]*recordingSub, 3*indexFrom)
	in := map[*recordingSub]bool{}
	var seq uint64
	for round := range 400 {
		s := subs[rng.IntN(len(subs))]
		if s == nil || !in[s] {
			if s == nil {
				s = &recordingSub{}
				subs[slices.Index(subs, nil)] = s
			}
			r.add(s, 10)
			if !r.start(s, seq) {
				t.Fatalf("round %d: start of a member failed", round)
			}
			in[s] = true
		} else {
			r.remove(s)
			in[s] = false
		}
		seq++
		r.deliver(Delivery{Seq: seq, LastSeq: seq - 1, Frame: fmt.Appendf(nil, "%d", seq)})
		for _, s := range subs {
			if s == nil {
				continue
			}
			f := s.snapshot()
			got := len(f) > 0 && f[len(f)-1] == fmt.Sprint(seq)
			if got != in[s] {
				t.Fatalf("round %d (%d members, index %v): member %v got the message: %v", round, len(r.members), r.index != nil, in[s], got)
			}
		}
	}
	if len(r.members) > indexFrom && r.index == nil || len(r.members) <= indexFrom/2 && r.index != nil {
		t.Errorf("%d members, index %v", len(r.members), r.index != nil)
	}
}
