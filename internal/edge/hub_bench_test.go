package edge

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/protocol"
)

// memFeed is the live half of a Backend in memory: the benchmark calls the
// captured deliver functions itself, so the hub is measured without a
// network. (The rest of Backend is not used by these benchmarks; the
// recovery tests use memBackend.)
type memFeed struct {
	Backend
	mu       sync.Mutex
	delivers map[string]func(Delivery)
}

func (f *memFeed) Subscribe(topic string, deliver func(Delivery)) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delivers[topic] = deliver
	return func() {}, nil
}

func (f *memFeed) LastSeq(context.Context, string) (uint64, error) { return 0, nil }

// queueSub is a subscriber with a real outbox, drained by a goroutine the
// way a connection's writer drains it (minus the socket).
type queueSub struct {
	out  *outbox
	done chan struct{}
	n    int
}

func (q *queueSub) deliver(b []byte) { q.out.push(b) }

// drain is the on-demand writer minus the socket: it lingers like
// Conn.writeLoop, so a steady stream keeps one drain goroutine.
func (q *queueSub) drain() {
	var spare [][]byte
	linger := time.NewTimer(writerLinger)
	defer linger.Stop()
	for {
		batch, _, empty, closed := q.out.take(spare)
		if empty {
			linger.Reset(writerLinger)
			select {
			case <-q.out.wake:
			case <-linger.C:
				if q.out.retire() {
					return
				}
			}
			continue
		}
		q.n += len(batch)
		if closed {
			close(q.done)
			return
		}
		clear(batch)
		spare = batch
	}
}

// BenchmarkFanout measures one room's live message reaching N local
// subscribers' queues: decode and encode once, then N enqueues.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) { benchFanout(b, n, 0) })
	}
}

// BenchmarkFanoutCached is BenchmarkFanout with the room keeping its latest
// messages, as rooms do by default (--room-cache): the cost of the cache's
// bookkeeping on the delivery path.
func BenchmarkFanoutCached(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) { benchFanout(b, n, 256) })
	}
}

func benchFanout(b *testing.B, n, recent int) {
	feed := &memFeed{delivers: map[string]func(Delivery){}}
	hub := NewHub(feed, slog.New(slog.DiscardHandler))
	hub.recent = recent
	subs := make([]*queueSub, n)
	for i := range subs {
		sub := &queueSub{done: make(chan struct{})}
		sub.out = newOutbox(1<<20, 1<<30, func() { go sub.drain() })
		subs[i] = sub
		r, err := hub.Join("chat.room.lobby", subs[i], 1024)
		if err != nil {
			b.Fatal(err)
		}
		r.start(subs[i], 0)
	}
	deliver := feed.delivers["chat.room.lobby"]
	msg := nats.NewMsg("parley.live.chat.room.lobby")
	msg.Data = []byte(`{"from":"alice","msg_id":"c-9","data":{"text":"hello, world"}}`)
	msg.Header.Set("Nats-Time-Stamp", "2026-11-25T06:00:00.123456789Z")
	msg.Header.Set("Nats-Last-Sequence", "0")
	tgt := pushTarget("chat.room.lobby")
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		msg.Header.Set("Nats-Sequence", fmt.Sprint(i+1))
		if recent > 0 { // a hole-free run, as RePublish sends it
			msg.Header.Set("Nats-Last-Sequence", fmt.Sprint(i))
		}
		d, err := decodeLive(msg, tgt)
		if err != nil {
			b.Fatal(err)
		}
		deliver(d)
	}
	b.StopTimer()
	for _, s := range subs {
		s.out.close()
		<-s.done
		if s.n != b.N {
			b.Fatalf("subscriber got %d of %d", s.n, b.N)
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
}

// countSub counts what it is given, and that is all.
type countSub struct{ n int }

func (c *countSub) deliver([]byte) { c.n++ }

// BenchmarkHubRoomCache isolates the room cache's bookkeeping on the
// delivery path: one room, one subscriber that only counts, prebuilt
// messages of two sizes (so that the accounting changes every time). With
// 4 KiB frames the per-room byte bound (256 KiB) drops a message for every
// one kept; with 200-B ones only the count bound rolls.
func BenchmarkHubRoomCache(b *testing.B) {
	for _, size := range []int{200, 4096} {
		b.Run(fmt.Sprintf("frame=%d", size), func(b *testing.B) {
			feed := &memFeed{delivers: map[string]func(Delivery){}}
			hub := NewHub(feed, slog.New(slog.DiscardHandler))
			hub.recent = 256
			sub := &countSub{}
			r, err := hub.Join("chat.room.lobby", sub, 1024)
			if err != nil {
				b.Fatal(err)
			}
			r.start(sub, 0)
			deliver := feed.delivers["chat.room.lobby"]
			frames := [2][]byte{make([]byte, size), make([]byte, size+8)}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				deliver(Delivery{Seq: uint64(i + 1), LastSeq: uint64(i), Frame: frames[i%2]})
			}
			b.StopTimer()
			if sub.n != b.N {
				b.Fatalf("subscriber got %d of %d", sub.n, b.N)
			}
		})
	}
}

func BenchmarkEncodePush(b *testing.B) {
	m := &protocol.Msg{Op: "msg", Room: "lobby", Seq: 123456, MsgID: "c-9", From: "alice", TS: 1764050400123, Data: []byte(`{"text":"hello, world"}`)}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for range b.N {
		buf = protocol.AppendMsg(buf[:0], m)
	}
}
