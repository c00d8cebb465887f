package edge

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/metrics"
	"github.com/parley-mesh/parley/protocol"
)

// ackingBackend acks every publish at once, on the caller's goroutine: the
// publisher's own work (books, span, headers, reply) without a network.
type ackingBackend struct {
	Backend
	p   *publisher
	seq uint64
}

func (a *ackingBackend) Connected() bool { return true }

func (a *ackingBackend) Publish(token uint64, _, _ string, _ []byte, _ traceHeaders) error {
	a.seq++
	a.p.acked(token, a.seq, false, nil)
	return nil
}

// BenchmarkTracing is what tracing costs the two per-message paths it
// touches, measured without a network: a client's pub through the
// publisher up to its reply (the ack is immediate), and one live message
// through the live subscription's handler up to the room. "off" is the
// default (no tracer provider); "off+traceparent" a client sending one to
// an edge that does not trace (it is only validated and passed on); "on"
// an SDK provider that samples everything and exports nothing (span
// creation and propagation, without the exporter's batching).
func BenchmarkTracing(b *testing.B) {
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	modes := []struct {
		name   string
		on     bool
		parent string
	}{{"off", false, ""}, {"off+traceparent", false, traceparent}, {"on", true, ""}, {"on+traceparent", true, traceparent}}
	for _, mode := range modes {
		var tracer trace.Tracer
		if mode.on {
			tracer = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample())).Tracer(tracerName)
		}

		b.Run("publish/"+mode.name, func(b *testing.B) {
			m := metrics.NewEdge(metrics.NewRegistry())
			p := newPublisher(m, time.Minute, 1<<20)
			defer p.stop()
			p.tracer = tracer
			p.backend = &ackingBackend{p: p}
			q := &queueSub{done: make(chan struct{})}
			q.out = newOutbox(1<<20, 1<<30, func() { go q.drain() })
			c := &Conn{e: &Edge{metrics: m}, ident: &auth.Identity{User: "alice"}, out: q.out}
			req := protocol.Request{ID: 1, Op: protocol.OpPub, Room: "lobby", MsgID: "c-9",
				Data: json.RawMessage(`{"text":"hello, world"}`), Traceparent: mode.parent}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := p.publish(c, &req, "chat.room.lobby"); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			q.out.close()
			<-q.done
			if q.n != b.N {
				b.Fatalf("%d replies for %d publishes", q.n, b.N)
			}
		})

		b.Run("deliver/"+mode.name, func(b *testing.B) {
			nb := &natsBackend{log: slog.New(slog.DiscardHandler), dropped: func() {}, tracer: tracer}
			n := 0
			handle := nb.liveHandler(pushTarget("chat.room.lobby"), func(Delivery) { n++ })
			msg := nats.NewMsg("parley.live.chat.room.lobby")
			msg.Data = []byte(`{"from":"alice","msg_id":"c-9","data":{"text":"hello, world"}}`)
			msg.Header.Set("Nats-Time-Stamp", "2026-11-25T06:00:00.123456789Z")
			if mode.parent != "" {
				msg.Header.Set("traceparent", mode.parent)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				msg.Header.Set("Nats-Sequence", fmt.Sprint(i+1))
				msg.Header.Set("Nats-Last-Sequence", fmt.Sprint(i))
				handle(msg)
			}
			if n != b.N {
				b.Fatalf("%d delivered of %d", n, b.N)
			}
		})
	}
}
