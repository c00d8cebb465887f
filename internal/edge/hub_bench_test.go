package edge

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/internal/protocol"
)

// memFeed is an in-memory Feed: the benchmark calls the captured deliver
// functions itself, so the hub is measured without a network.
type memFeed struct {
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

func (f *memFeed) Repair(string, uint64, uint64) []Delivery { return nil }

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
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			feed := &memFeed{delivers: map[string]func(Delivery){}}
			hub := NewHub(feed)
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
