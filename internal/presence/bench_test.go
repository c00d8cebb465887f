package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

const (
	benchUsers = 100_000
	benchRooms = 10_000
	benchEdges = 4
)

func counter(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// BenchmarkPresence100kUsers10kRooms: 100,000 users on 4 simulated edges
// connect and join one of 10,000 rooms each (200,000 presence events),
// through real NATS into one worker writing a real KV bucket. Reported:
// events/s folded into the view, events/s until every KV write is acked,
// KV writes per room join (one room key plus the user's online key), and
// the heap the worker's view holds.
func BenchmarkPresence100kUsers10kRooms(b *testing.B) {
	for range b.N {
		b.StopTimer()
		srv := natstest.StartJetStream(b)
		nc := natstest.Connect(b, srv.URL())
		w, err := New(Config{Logger: benchLogger(), ID: "bench", Listen: "", EdgeTimeout: time.Hour, LeaseInterval: 50 * time.Millisecond}, nc)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		natstest.Eventually(b, 10*time.Second, func() error {
			if !w.Writer() {
				return fmt.Errorf("not writer yet")
			}
			return nil
		})
		pubs := make([]*natsConn, benchEdges)
		for i := range pubs {
			pubs[i] = &natsConn{nc: natstest.Connect(b, srv.URL()), edge: "bench-e" + strconv.Itoa(i)}
		}
		events := float64(2 * benchUsers)
		folded := func() float64 {
			return counter(w.metrics.Events.WithLabelValues(pjs.PresenceKindConnect)) + counter(w.metrics.Events.WithLabelValues(pjs.PresenceKindJoin))
		}
		written := func() float64 { return counter(w.metrics.KVWrites.WithLabelValues("put", "ok")) }
		b.StartTimer()

		start := time.Now()
		for u := range benchUsers {
			p := pubs[u%benchEdges]
			user := "user-" + strconv.Itoa(u)
			p.publish(b, pjs.PresenceEdgeMsg{Kind: pjs.PresenceKindConnect, User: user, Conns: 1, Since: 1})
			p.publish(b, pjs.PresenceEdgeMsg{Kind: pjs.PresenceKindJoin, Room: "room-" + strconv.Itoa(u%benchRooms), User: user, Conns: 1, Since: 1})
		}
		for _, p := range pubs {
			if err := p.nc.Flush(); err != nil {
				b.Fatal(err)
			}
		}
		var foldedAt time.Duration
		natstest.Eventually(b, 5*time.Minute, func() error {
			if foldedAt == 0 && folded() >= events {
				foldedAt = time.Since(start)
			}
			if n := written(); n < events {
				return fmt.Errorf("%v of %v KV writes acked (conflict %v error %v folded %v invalid %v)", n, events, counter(w.metrics.KVWrites.WithLabelValues("put", "conflict")), counter(w.metrics.KVWrites.WithLabelValues("put", "error")), folded(), counter(w.metrics.Invalid))
			}
			return nil
		})
		all := time.Since(start)
		b.StopTimer()
		if foldedAt == 0 {
			foldedAt = all
		}
		kvOps := written() + counter(w.metrics.KVWrites.WithLabelValues("put", "conflict")) + counter(w.metrics.KVWrites.WithLabelValues("put", "error"))
		b.ReportMetric(events/foldedAt.Seconds(), "events/s-folded")
		b.ReportMetric(events/all.Seconds(), "events/s-in-kv")
		b.ReportMetric(kvOps/benchUsers, "kv-writes/join")
		b.ReportMetric(counter(w.metrics.Announcements.WithLabelValues(pjs.PresenceOpJoin))/benchUsers, "announces/join")
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPresenceView100kUsers10kRooms measures what the worker holds for
// the same population: the view of 200,000 entries (with the writer's
// bookkeeping, which lives in the entries). Nothing else runs, so the heap
// difference is the view's.
func BenchmarkPresenceView100kUsers10kRooms(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		v := newView(func(*entry) {})
		now := time.Now()
		for u := range benchUsers {
			es := v.edge("bench-e"+strconv.Itoa(u%benchEdges), now)
			user := "user-" + strconv.Itoa(u)
			v.set(es, "", user, 1, 1)
			v.set(es, "room-"+strconv.Itoa(u%benchRooms), user, 1, 1)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(v)
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/(1<<20), "view-MB")
	}
}

// benchLogger shows the worker's warnings (a lost lease, failed writes):
// a benchmark that hides them measures the wrong thing.
func benchLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type natsConn struct {
	nc interface {
		Publish(string, []byte) error
		Flush() error
	}
	edge string
	seq  uint64
}

func (p *natsConn) publish(b *testing.B, m pjs.PresenceEdgeMsg) {
	p.seq++
	m.Edge, m.Seq = p.edge, p.seq
	data, _ := json.Marshal(m)
	if err := p.nc.Publish(pjs.PresenceEdgeSubject(p.edge, m.Kind), data); err != nil {
		b.Fatal(err)
	}
}
