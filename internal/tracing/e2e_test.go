package tracing_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/archive"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/internal/presence"
	"github.com/parley-mesh/parley/internal/tracing"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// provider is a tracer provider of one component, exporting synchronously
// (at each span's end) into the test's one in-memory exporter; its resource
// says which component and instance a span came from.
func provider(exp *tracetest.InMemoryExporter, service, instance string) *sdktrace.TracerProvider {
	return sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithResource(
		resource.NewSchemaless(semconv.ServiceName(service), semconv.ServiceInstanceID(instance))))
}

func attr(s tracetest.SpanStub, key attribute.Key) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

func instance(s tracetest.SpanStub) string {
	v, _ := s.Resource.Set().Value(semconv.ServiceInstanceIDKey)
	return v.Emit()
}

// find is the spans named name whose parley.seq is seq (0: any).
func find(exp *tracetest.InMemoryExporter, name string, seq uint64) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.Name == name && (seq == 0 || attr(s, tracing.AttrSeq) == fmt.Sprint(seq)) {
			out = append(out, s)
		}
	}
	return out
}

// childOf fails unless s is a child of parent (same trace, parent's span id).
func childOf(t *testing.T, s tracetest.SpanStub, parent trace.SpanContext) {
	t.Helper()
	if s.SpanContext.TraceID() != parent.TraceID() || s.Parent.SpanID() != parent.SpanID() {
		t.Errorf("%s on %s: trace %s parent %s, want a child of %s/%s", s.Name, instance(s),
			s.SpanContext.TraceID(), s.Parent.SpanID(), parent.TraceID(), parent.SpanID())
	}
}

// liveSub is a backend service's plain nats.go subscription to what the
// stream stores in room, registered with the server when it returns.
func liveSub(t *testing.T, url, room string) *nats.Subscription {
	t.Helper()
	nc := natstest.Connect(t, url)
	sub, err := nc.SubscribeSync(pjs.LiveSubject(pjs.RoomSubject(room)))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

func want(t *testing.T, s tracetest.SpanStub, kvs map[attribute.Key]string) {
	t.Helper()
	for k, v := range kvs {
		if got := attr(s, k); got != v {
			t.Errorf("%s on %s: %s = %q, want %q", s.Name, instance(s), k, got, v)
		}
	}
}

// One trace from a client's pub to the deliveries and the archive, through
// real components: an embedded nats-server with JetStream, two edges (the
// publisher's and another with two subscribers), the archiver on SQLite and
// a presence worker, with real WebSocket clients. Every component has a
// tracer provider of its own over one in-memory exporter.
//
// What it holds: the pub's span is a child of the client's span (the
// traceparent the Go client sent); the NATS message carries the pub's span
// as traceparent (a backend's nats.go subscriber sees it); each edge has
// one deliver span per message, however many subscribers, and the archiver
// one archive span, all children of the pub's span; a pub without a
// traceparent starts its trace at the edge; a backend's message published
// with nats.go and a traceparent is continued by the edges and the
// archiver, one without is traced by nobody; a presence query is the edge's
// client span and the worker's server span; and the archiver's log line
// about a message carries the message's trace_id.
func TestTraceFromPubToDeliveryAndArchive(t *testing.T) {
	ctx := t.Context()
	srv := natstest.StartJetStream(t)
	exp := tracetest.NewInMemoryExporter()
	startEdge := func(id string) *edge.Edge {
		return edgetest.Start(t, srv.URL(), func(c *edge.Config) {
			c.TracerProvider = provider(exp, "parley-edge", id)
			c.Presence.EdgeID = id
		})
	}
	e1, e2 := startEdge("e1"), startEdge("e2")

	store, err := archive.OpenSQLite(ctx, filepath.Join(t.TempDir(), "archive.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	var archLog edgetest.LogBuffer
	acfg := archive.DefaultConfig()
	acfg.FetchWait = 200 * time.Millisecond
	acfg.TracerProvider = provider(exp, "parley-archiver", "a1")
	acfg.Logger = slog.New(tracing.LogHandler(slog.NewJSONHandler(&archLog, nil)))
	arch, err := archive.New(acfg, natstest.Connect(t, srv.URL()), store)
	if err != nil {
		t.Fatal(err)
	}
	w, err := presence.New(presence.Config{ID: "p1", TracerProvider: provider(exp, "parley-presence", "p1")}, natstest.Connect(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range []interface{ Run(context.Context) error }{arch, w} {
		rctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run.Run(rctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%T: %v", run, err)
			}
		})
	}
	natstest.Eventually(t, 10*time.Second, func() error {
		if !arch.Ready() || !w.Ready() {
			return fmt.Errorf("archiver ready %t, presence ready %t", arch.Ready(), w.Ready())
		}
		return nil
	})

	alice := edgetest.Dial(t, e1, "alice")
	bob := edgetest.Dial(t, e2, "bob")
	carol := edgetest.Dial(t, e2, "carol")
	for _, c := range []*client.Client{alice, bob, carol} {
		if _, err := c.Subscribe(ctx, "lobby"); err != nil {
			t.Fatal(err)
		}
	}
	live := liveSub(t, srv.URL(), "lobby")
	js := natstest.JetStream(t, srv.URL())
	app := provider(exp, "app", "alice-laptop").Tracer("app")
	billing := provider(exp, "billing", "b1").Tracer("billing")

	// 1: a pub inside the application's span.
	cctx, cspan := app.Start(ctx, "app.send")
	ack1, err := alice.Publish(cctx, "lobby", "m-1", map[string]string{"text": "traced"})
	cspan.End()
	if err != nil {
		t.Fatal(err)
	}
	// 2: a pub without a trace: the edge starts one.
	ack2, err := alice.Publish(ctx, "lobby", "m-2", "untraced")
	if err != nil {
		t.Fatal(err)
	}
	// 3 and 4: a backend's messages with nats.go, with and without a
	// traceparent; then poison messages (no room can be named a.b), one
	// without a traceparent and one with.
	bctx, bspan := billing.Start(ctx, "billing.notify")
	backendPub := func(subject string, traced bool) uint64 {
		t.Helper()
		m := nats.NewMsg(subject)
		m.Data = []byte(`{"from":"billing","data":"invoice"}`)
		if traced {
			tracing.Inject(bctx, m.Header)
		}
		a, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return a.Sequence
	}
	seq3 := backendPub(pjs.RoomSubject("lobby"), true)
	seq4 := backendPub(pjs.RoomSubject("lobby"), false)
	seqUntracedPoison := backendPub("chat.room.c.d", false)
	seqPoison := backendPub("chat.room.a.b", true)
	bspan.End()
	// The last one, traced by the edge: once its spans are in, every
	// earlier message's are (each edge delivers a topic in order, the
	// archiver stores in order).
	ack6, err := alice.Publish(ctx, "lobby", "m-6", "last")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{alice, bob, carol} {
		var seqs []uint64
		for _, m := range edgetest.NextN(t, c, 5) {
			seqs = append(seqs, m.Seq)
		}
		if !slices.Equal(seqs, []uint64{ack1.Seq, ack2.Seq, seq3, seq4, ack6.Seq}) {
			t.Fatalf("received seqs %v", seqs)
		}
	}
	natstest.Eventually(t, 10*time.Second, func() error {
		if d, a := find(exp, tracing.SpanDeliver, ack6.Seq), find(exp, tracing.SpanArchive, ack6.Seq); len(d) < 2 || len(a) < 1 {
			return fmt.Errorf("message 6: %d deliver spans, %d archive spans", len(d), len(a))
		}
		if len(find(exp, tracing.SpanArchive, seqPoison)) == 0 {
			return fmt.Errorf("no archive span of the poison message")
		}
		return nil
	})

	// The pub's span continues the client's span; the stream's answer is on it.
	pubs := find(exp, tracing.SpanPublish, ack1.Seq)
	if len(pubs) != 1 {
		t.Fatalf("%d publish spans of seq %d", len(pubs), ack1.Seq)
	}
	pub := pubs[0]
	childOf(t, pub, cspan.SpanContext())
	if pub.SpanKind != trace.SpanKindProducer || instance(pub) != "e1" || pub.Status.Code != codes.Unset {
		t.Errorf("publish span: kind %v on %s, status %+v", pub.SpanKind, instance(pub), pub.Status)
	}
	want(t, pub, map[attribute.Key]string{
		"messaging.system": "nats", "messaging.destination.name": "chat.room.lobby", "messaging.operation.type": "send",
		"messaging.message.id": "m-1", tracing.AttrRoom: "lobby", tracing.AttrUser: "alice",
		tracing.AttrSeq: fmt.Sprint(ack1.Seq), tracing.AttrDuplicate: "false",
	})

	// What a backend subscriber sees: the same trace, the pub's span as parent.
	m, err := live.NextMsg(edgetest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Header.Get("traceparent"), fmt.Sprintf("00-%s-%s-01", pub.SpanContext.TraceID(), pub.SpanContext.SpanID()); got != want {
		t.Errorf("backend subscriber's traceparent %q, want %q", got, want)
	}

	// checkHops: each edge delivered seq once (both of e2's subscribers
	// included) and the archiver stored it, all children of parent.
	checkHops := func(seq uint64, parent trace.SpanContext) {
		t.Helper()
		ds := find(exp, tracing.SpanDeliver, seq)
		var edges []string
		for _, d := range ds {
			edges = append(edges, instance(d))
			childOf(t, d, parent)
			if d.SpanKind != trace.SpanKindConsumer {
				t.Errorf("deliver span kind %v", d.SpanKind)
			}
			want(t, d, map[attribute.Key]string{
				"messaging.destination.name": "parley.live.chat.room.lobby", "messaging.operation.type": "process",
				"messaging.operation.name": "deliver", tracing.AttrRoom: "lobby",
			})
		}
		slices.Sort(edges)
		if !slices.Equal(edges, []string{"e1", "e2"}) {
			t.Errorf("seq %d: deliver spans on %v, want one on each of e1 and e2", seq, edges)
		}
		as := find(exp, tracing.SpanArchive, seq)
		if len(as) != 1 {
			t.Fatalf("seq %d: %d archive spans", seq, len(as))
		}
		childOf(t, as[0], parent)
		if as[0].SpanKind != trace.SpanKindConsumer || as[0].Status.Code != codes.Unset {
			t.Errorf("archive span: kind %v, status %+v", as[0].SpanKind, as[0].Status)
		}
		want(t, as[0], map[attribute.Key]string{
			"messaging.destination.name": "chat.room.lobby", "messaging.consumer.group.name": pjs.ArchiveConsumer,
			tracing.AttrRoom: "lobby", tracing.AttrSeq: fmt.Sprint(seq),
		})
		if instance(as[0]) != "a1" {
			t.Errorf("archive span from %s", instance(as[0]))
		}
	}
	checkHops(ack1.Seq, pub.SpanContext)

	// A pub without a traceparent is the root of a trace of its own.
	pubs = find(exp, tracing.SpanPublish, ack2.Seq)
	if len(pubs) != 1 || pubs[0].Parent.IsValid() || pubs[0].SpanContext.TraceID() == pub.SpanContext.TraceID() {
		t.Fatalf("publish spans of the untraced pub: %+v", pubs)
	}
	checkHops(ack2.Seq, pubs[0].SpanContext)
	// A backend's traced message: continued; its untraced one: no spans.
	checkHops(seq3, bspan.SpanContext())
	if n := len(find(exp, tracing.SpanDeliver, seq4)) + len(find(exp, tracing.SpanArchive, seq4)) + len(find(exp, tracing.SpanArchive, seqUntracedPoison)); n != 0 {
		t.Errorf("the backend's untraced messages have %d spans", n)
	}

	// The poison message's archive span says so, and so does the log line,
	// with the trace's id.
	poison := find(exp, tracing.SpanArchive, seqPoison)[0]
	childOf(t, poison, bspan.SpanContext())
	if poison.Status.Code != codes.Error || !strings.HasPrefix(poison.Status.Description, "poison") {
		t.Errorf("poison archive span status %+v", poison.Status)
	}
	logged := 0
	for _, line := range strings.Split(strings.TrimSpace(archLog.String()), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(line), &l) != nil || l["msg"] != "poison message recorded and skipped" {
			continue
		}
		logged++
		switch l["subject"] {
		case "chat.room.a.b":
			if l["trace_id"] != bspan.SpanContext().TraceID().String() || l["span_id"] != poison.SpanContext.SpanID().String() {
				t.Errorf("poison log line without the message's trace: %s", line)
			}
		default:
			if _, ok := l["trace_id"]; ok {
				t.Errorf("log line of an untraced message with a trace: %s", line)
			}
		}
	}
	if logged != 2 {
		t.Errorf("%d poison log lines, want 2, in:\n%s", logged, archLog.String())
	}

	// A presence query: the edge's client span, the worker's server span.
	qctx, qspan := app.Start(ctx, "app.who")
	users, err := alice.Presence(qctx, "lobby")
	qspan.End()
	if err != nil {
		t.Fatal(err)
	}
	var edgeQ, workerQ []tracetest.SpanStub
	natstest.Eventually(t, 10*time.Second, func() error {
		edgeQ, workerQ = nil, nil
		for _, s := range find(exp, tracing.SpanPresenceQuery, 0) {
			switch s.SpanKind {
			case trace.SpanKindClient:
				edgeQ = append(edgeQ, s)
			case trace.SpanKindServer:
				workerQ = append(workerQ, s)
			}
		}
		if len(edgeQ) != 1 || len(workerQ) != 1 {
			return fmt.Errorf("%d client and %d server presence spans", len(edgeQ), len(workerQ))
		}
		return nil
	})
	childOf(t, edgeQ[0], qspan.SpanContext())
	childOf(t, workerQ[0], edgeQ[0].SpanContext)
	if instance(edgeQ[0]) != "e1" || instance(workerQ[0]) != "p1" {
		t.Errorf("presence spans on %s and %s", instance(edgeQ[0]), instance(workerQ[0]))
	}
	for _, s := range []tracetest.SpanStub{edgeQ[0], workerQ[0]} {
		want(t, s, map[attribute.Key]string{tracing.AttrRoom: "lobby", tracing.AttrUsers: fmt.Sprint(len(users))})
	}
}

// With tracing off the edge starts no span, but a client's valid
// traceparent still travels with its message, in canonical form, for the
// services after the edge; an invalid one (here an attempt to smuggle a
// header in) is dropped, and the pub succeeds all the same.
func TestClientTraceparentTravelsWithTracingOff(t *testing.T) {
	ctx := t.Context()
	srv := natstest.StartJetStream(t)
	e := edgetest.Start(t, srv.URL(), nil)
	live := liveSub(t, srv.URL(), "lobby")

	// The Go client sends the trace context of ctx's span; here a remote
	// one, as a service that received it would hold.
	sc := tracing.Parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "congo=t61rcWkgMzE")
	alice := edgetest.Dial(t, e, "alice")
	if _, err := alice.Publish(trace.ContextWithRemoteSpanContext(ctx, sc), "lobby", "m-1", 1); err != nil {
		t.Fatal(err)
	}
	m, err := live.NextMsg(edgetest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("traceparent") != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" || m.Header.Get("tracestate") != "congo=t61rcWkgMzE" {
		t.Fatalf("headers %v", m.Header)
	}

	ws, _, err := websocket.DefaultDialer.Dial(edgetest.URL(e)+"?user=bob", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	req, _ := json.Marshal(protocol.Request{ID: 1, Op: protocol.OpPub, Room: "lobby", Data: json.RawMessage(`2`),
		Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nNats-Msg-Id: forged", Tracestate: "x"})
	if err := ws.WriteMessage(websocket.TextMessage, req); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(edgetest.Wait))
	_, b, err := ws.ReadMessage()
	var r protocol.Reply
	if err != nil || json.Unmarshal(b, &r) != nil || !r.OK || r.Seq == nil {
		t.Fatalf("pub with a bad traceparent: %s %v", b, err)
	}
	m, err = live.NextMsg(edgetest.Wait)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"traceparent", "tracestate", "Nats-Msg-Id"} {
		if v := m.Header.Values(h); len(v) != 0 {
			t.Errorf("the bad traceparent left header %s: %q", h, v)
		}
	}
}
