package edge_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/protocol"
)

// backend publishes like a backend service: JetStream, envelope, dedup id.
type backend struct {
	t  *testing.T
	js jetstream.JetStream
}

func newBackend(t *testing.T, url string) *backend {
	nc := natstest.Connect(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &backend{t: t, js: js}
}

// storedSeqs is the ground truth: the seqs the stream holds for subject
// after seq after, read with an ordered consumer.
func storedSeqs(t *testing.T, js jetstream.JetStream, subject string, after uint64) []uint64 {
	t.Helper()
	ctx := ctxT(t)
	cons, err := js.OrderedConsumer(ctx, "PARLEY_CHAT", jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: after + 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for range info.NumPending {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		md, _ := m.Metadata()
		seqs = append(seqs, md.Sequence.Stream)
	}
	return seqs
}

func (b *backend) pub(room string, i int) uint64 {
	b.t.Helper()
	ack, err := b.js.Publish(context.Background(), "chat.room."+room, fmt.Appendf(nil, `{"from":"svc","data":%d}`, i))
	if err != nil {
		b.t.Fatalf("backend publish: %v", err)
	}
	return ack.Sequence
}

// collect reads n messages of room from c and returns their seqs.
func collect(t *testing.T, c *client.Client, n int) []uint64 {
	t.Helper()
	seqs := make([]uint64, 0, n)
	for len(seqs) < n {
		seqs = append(seqs, edgetest.Next(t, c).Seq)
	}
	return seqs
}

func equalSeqs(t *testing.T, what string, got, want []uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d messages %v, want %d %v", what, len(got), got, len(want), want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: message %d is seq %d, want %d (got %v)", what, i, got[i], want[i], got)
		}
	}
}

// A client reads a few messages on edge A, drops, and resumes on edge B
// with since: it gets exactly what it missed, in order, then live.
func TestResumeOnAnotherEdge(t *testing.T) {
	srv := natstest.StartJetStream(t)
	a, b := startEdge(t, srv.URL(), nil), startEdge(t, srv.URL(), nil)
	be := newBackend(t, srv.URL())

	c := edgetest.Dial(t, a, "alice")
	subscribe(t, c, "lobby")
	var seen []uint64
	for i := range 3 {
		be.pub("lobby", i)
	}
	seen = collect(t, c, 3)
	c.Close()

	var missed []uint64
	for i := range 50 {
		be.pub("other", i) // interleaved traffic of other rooms
		missed = append(missed, be.pub("lobby", 100+i))
	}
	c2 := edgetest.Dial(t, b, "alice")
	r, err := c2.Subscribe(ctxT(t), "lobby", client.Since(seen[2]))
	if err != nil {
		t.Fatal(err)
	}
	if r.Recovered == nil || !*r.Recovered || r.Seq != missed[len(missed)-1] {
		t.Fatalf("resume reply %+v", r)
	}
	equalSeqs(t, "replay", collect(t, c2, 50), missed)
	live := be.pub("lobby", 999)
	if m := edgetest.Next(t, c2); m.Seq != live {
		t.Fatalf("after the replay got seq %d, want live %d", m.Seq, live)
	}
	noMessage(t, c2, 100*time.Millisecond)
}

// The same while the room keeps receiving messages during the resume: the
// seam between replay and live has neither a gap nor a duplicate.
func TestResumeUnderContinuousPublishing(t *testing.T) {
	srv := natstest.StartJetStream(t)
	a, b := startEdge(t, srv.URL(), nil), startEdge(t, srv.URL(), nil)
	be := newBackend(t, srv.URL())

	var mu sync.Mutex
	var stored []uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ack, err := be.js.Publish(context.Background(), "chat.room.busy", fmt.Appendf(nil, `{"data":%d}`, i))
			if err != nil {
				return // reported below: the resumes wait for stored messages
			}
			s := ack.Sequence
			if _, err := be.js.Publish(context.Background(), "chat.room.noise", []byte(`{"data":0}`)); err != nil {
				return
			}
			mu.Lock()
			stored = append(stored, s)
			mu.Unlock()
		}
	}()
	waitStored := func(n int) {
		natstest.Eventually(t, 10*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(stored) < n {
				return fmt.Errorf("%d stored", len(stored))
			}
			return nil
		})
	}
	waitStored(20)
	c := edgetest.Dial(t, a, "alice")
	sub := subscribe(t, c, "busy")
	first := collect(t, c, 10)
	c.Close()
	waitStored(len(first) + 200)

	for round := range 3 { // resume several times, alternating edges
		target := []*edge.Edge{b, a}[round%2]
		c = edgetest.Dial(t, target, "alice")
		last := first[len(first)-1]
		r, err := c.Subscribe(ctxT(t), "busy", client.Since(last))
		if err != nil || r.Recovered == nil || !*r.Recovered {
			t.Fatalf("resume %d: %+v %v", round, r, err)
		}
		got := collect(t, c, 150)
		c.Close()
		// The client may see a message before its publisher saw the ack.
		natstest.Eventually(t, 10*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(stored) == 0 || stored[len(stored)-1] < got[len(got)-1] {
				return fmt.Errorf("seq %d not acked to the publisher yet", got[len(got)-1])
			}
			return nil
		})
		mu.Lock()
		var want []uint64
		for _, s := range stored {
			if s > last && len(want) < len(got) {
				want = append(want, s)
			}
		}
		mu.Unlock()
		equalSeqs(t, fmt.Sprintf("resume %d", round), got, want)
		first = got
	}
	close(stop)
	wg.Wait()
	_ = sub
}

// Retention dropped the first missed message: recovered is false with a
// reason, and what the stream still has is delivered.
func TestResumeAfterRetentionSaysNotRecovered(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.Stream.MaxMsgsPerSubject = 5 })
	be := newBackend(t, srv.URL())
	var seqs []uint64
	for i := range 20 {
		seqs = append(seqs, be.pub("small", i))
	}
	c := edgetest.Dial(t, e, "alice")
	r, err := c.Subscribe(ctxT(t), "small", client.Since(seqs[1]))
	if err != nil {
		t.Fatal(err)
	}
	if r.Recovered == nil || *r.Recovered || r.Reason == "" {
		t.Fatalf("reply %+v, want recovered:false with a reason", r)
	}
	equalSeqs(t, "what is left", collect(t, c, 5), seqs[15:])

	// A resume within what is kept is recovered.
	c2 := edgetest.Dial(t, e, "bob")
	r, err = c2.Subscribe(ctxT(t), "small", client.Since(seqs[16]))
	if err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume within retention: %+v %v", r, err)
	}
	equalSeqs(t, "kept", collect(t, c2, 3), seqs[17:])
}

func TestSubLastAndHistory(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	be := newBackend(t, srv.URL())
	var lobby []uint64
	// A dense stretch, then a long sparse one (one lobby message in 300):
	// history has to find its start by counting, not by reading everything.
	for i := range 40 {
		lobby = append(lobby, be.pub("lobby", i))
	}
	js := natstest.JetStream(t, srv.URL())
	for i := range 3000 {
		if _, err := js.PublishAsync("chat.room.noise", []byte(`{"data":0}`)); err != nil {
			t.Fatal(err)
		}
		if i%300 == 299 {
			<-js.PublishAsyncComplete()
			lobby = append(lobby, be.pub("lobby", 1000+i))
		}
	}
	<-js.PublishAsyncComplete()

	c := edgetest.Dial(t, e, "alice")
	r, err := c.Subscribe(ctxT(t), "lobby", client.Last(15))
	if err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("sub last: %+v %v", r, err)
	}
	equalSeqs(t, "last 15", collect(t, c, 15), lobby[len(lobby)-15:])

	for _, tc := range []struct {
		before uint64
		limit  int
		want   []uint64
	}{
		{0, 5, lobby[len(lobby)-5:]},
		{lobby[45], 10, lobby[35:45]},
		{lobby[3], 10, lobby[:3]},
		{lobby[len(lobby)-1], 1, lobby[len(lobby)-2 : len(lobby)-1]},
		{0, 0, lobby[len(lobby)-50:]}, // default limit 50
		{lobby[0], 10, nil},
	} {
		msgs, err := c.History(ctxT(t), "lobby", tc.before, tc.limit)
		if err != nil {
			t.Fatalf("history before %d: %v", tc.before, err)
		}
		got := make([]uint64, len(msgs))
		for i, m := range msgs {
			got[i] = m.Seq
			if m.Room != "lobby" {
				t.Fatalf("history message %+v", m)
			}
		}
		equalSeqs(t, fmt.Sprintf("history before %d limit %d", tc.before, tc.limit), got, tc.want)
	}
	if _, err := c.History(ctxT(t), "a.b", 0, 1); !isCode(err, protocol.CodeBadRequest) {
		t.Fatalf("history of a bad name: %v", err)
	}
}

// RePublish is at-most-once: here the edge's NATS connection comes back
// after a restart later than a backend's, so the edge misses messages
// published in between. The edge reads them from the stream (on reconnect,
// or when the next live message's Nats-Last-Sequence reveals the gap) and
// the client sees every message once, in order.
func TestLiveGapRepairedAfterNATSRestart(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdgeWith(t, srv.URL(), nil, nats.ReconnectWait(time.Second), nats.ReconnectJitter(0, 0))
	c := edgetest.Dial(t, e, "alice")
	subscribe(t, c, "lobby")
	be := newBackend(t, srv.URL())
	first := be.pub("lobby", 0)
	if m := edgetest.Next(t, c); m.Seq != first {
		t.Fatalf("got %+v", m)
	}

	srv.Restart(t)
	natstest.Eventually(t, 10*time.Second, func() error { // the backend reconnects first
		_, err := be.js.Publish(context.Background(), "chat.room.lobby", []byte(`{"data":"during"}`))
		return err
	})
	for i := range 9 {
		be.pub("lobby", i)
	}
	natstest.Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get("http://" + e.Addr() + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	})
	// Published after the edge resubscribed: arrives live, reveals the gap.
	natstest.Eventually(t, 10*time.Second, func() error {
		be.pub("lobby", 100)
		if edgetest.Metric(t, e, "parley_edge_gaps_repaired_total") < 1 {
			return fmt.Errorf("no gap repaired yet")
		}
		return nil
	})
	want := storedSeqs(t, be.js, "chat.room.lobby", first)
	if len(want) < 11 {
		t.Fatalf("stream holds %v after seq %d", want, first)
	}
	equalSeqs(t, "after the restart", collect(t, c, len(want)), want)
	noMessage(t, c, 100*time.Millisecond)
}

func startEdgeWith(t *testing.T, url string, mutate func(*edge.Config), opts ...nats.Option) *edge.Edge {
	t.Helper()
	return startEdgeOpts(t, url, mutate, opts)
}

// awaitAcks waits for each publish's ack, in order, and returns their
// sequences.
func awaitAcks(t *testing.T, futures []jetstream.PubAckFuture, within time.Duration) []uint64 {
	t.Helper()
	seqs := make([]uint64, 0, len(futures))
	for _, f := range futures {
		select {
		case ack := <-f.Ok():
			seqs = append(seqs, ack.Sequence)
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(within):
			t.Fatal("publish not acked")
		}
	}
	return seqs
}

// While someone on the edge keeps a room subscribed, the edge holds the
// room's latest messages: a resume on that edge is served from them, with
// exactly the messages the stream would give and no stream read.
func TestResumeFromTheRoomsRecentMessages(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	be := newBackend(t, srv.URL())
	keeper := edgetest.Dial(t, e, "keeper")
	subscribe(t, keeper, "lobby")
	c := edgetest.Dial(t, e, "alice")
	subscribe(t, c, "lobby")
	first := be.pub("lobby", 0)
	if m := edgetest.Next(t, c); m.Seq != first {
		t.Fatalf("got %+v", m)
	}
	c.Close()
	var missed []uint64
	for i := range 20 {
		be.pub("other", i)
		missed = append(missed, be.pub("lobby", 1+i))
	}
	equalSeqs(t, "keeper", collect(t, keeper, 21), append([]uint64{first}, missed...))

	c2 := edgetest.Dial(t, e, "alice")
	r, err := c2.Subscribe(ctxT(t), "lobby", client.Since(first))
	if err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume: %+v %v", r, err)
	}
	equalSeqs(t, "resume", collect(t, c2, 20), missed)
	if got := edgetest.Metric(t, e, "parley_edge_replayed_from_memory_total"); got != 20 {
		t.Fatalf("replayed from memory %v, want 20", got)
	}
	c3 := edgetest.Dial(t, e, "bob")
	if _, err := c3.Subscribe(ctxT(t), "lobby", client.Last(5)); err != nil {
		t.Fatal(err)
	}
	equalSeqs(t, "last 5", collect(t, c3, 5), missed[15:])
	live := be.pub("lobby", 99)
	for _, cl := range []*client.Client{c2, c3} {
		if m := edgetest.Next(t, cl); m.Seq != live {
			t.Fatalf("after the replay got %+v, want live %d", m, live)
		}
	}
}

// Resumes and history pages larger than one Direct Get batch (256) read
// every batch: the exact newest window, every missed message; a resume
// over --max-recover streams every message (replay.go), a last over it
// gets the newest --max-recover.
func TestLargeResumesAndHistoryPages(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.RoomCache = 0 }) // the stream, not the room's memory
	js := natstest.JetStream(t, srv.URL())
	const n = 1300
	var seqs []uint64
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		f, err := js.PublishAsync("chat.room.big", fmt.Appendf(nil, `{"data":%d}`, i))
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
		if i%100 == 50 { // interleave another room: seqs are not contiguous
			if _, err := js.PublishAsync("chat.room.other", []byte(`{"data":0}`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	seqs = append(seqs, awaitAcks(t, futures, 10*time.Second)...)

	c := edgetest.Dial(t, e, "reader")
	for _, limit := range []int{129, 255, 256, 257, 300, 500} {
		msgs, err := c.History(ctxT(t), "big", 0, limit)
		if err != nil {
			t.Fatalf("history limit %d: %v", limit, err)
		}
		got := make([]uint64, len(msgs))
		for i, m := range msgs {
			got[i] = m.Seq
		}
		equalSeqs(t, fmt.Sprintf("history limit %d", limit), got, seqs[n-limit:])
	}
	msgs, err := c.History(ctxT(t), "big", seqs[700], 400)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 400 || msgs[0].Seq != seqs[300] || msgs[399].Seq != seqs[699] {
		t.Fatalf("history before seq %d: %d messages, %d..%d", seqs[700], len(msgs), msgs[0].Seq, msgs[len(msgs)-1].Seq)
	}

	for _, tc := range []struct {
		name      string
		opt       client.SubOption
		want      []uint64
		recovered bool
	}{
		{"since, 470 missed", client.Since(seqs[n-471]), seqs[n-470:], true},
		{"last 600", client.Last(600), seqs[n-600:], true},
		{"since 0, 1300 stored", client.Since(0), seqs, true},
		{"last 1300", client.Last(1300), seqs[n-1000:], true},
	} {
		c := edgetest.Dial(t, e, "resumer")
		r, err := c.Subscribe(ctxT(t), "big", tc.opt)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Recovered == nil || *r.Recovered != tc.recovered {
			t.Fatalf("%s: reply %+v, want recovered %v", tc.name, r, tc.recovered)
		}
		equalSeqs(t, tc.name, collect(t, c, len(tc.want)), tc.want)
		c.Close()
	}
}

// A replay larger than half the connection's queue, sent at once, would
// get the client closed as a slow consumer, again on every retry. A resume
// (since) is then replayed paced by the queue: all of it, recovered:true.
// A last gets the newest messages that fit, says recovered:false. Either
// way the connection goes on with live messages. "last":0 is no last at all.
func TestResumeBoundedByTheQueue(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxQueuedBytes = 64 << 10 })
	be := newBackend(t, srv.URL())
	pad := strings.Repeat("x", 2000)
	var seqs []uint64
	for i := range 100 {
		ack, err := be.js.Publish(context.Background(), "chat.room.heavy", fmt.Appendf(nil, `{"data":{"i":%d,"pad":%q}}`, i, pad))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ack.Sequence)
	}
	c := edgetest.Dial(t, e, "resumer")
	r, err := c.Subscribe(ctxT(t), "heavy", client.Since(0))
	if err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume of 100 × 2 KB with a 64 KiB queue: %+v %v", r, err)
	}
	equalSeqs(t, "paced resume", collect(t, c, len(seqs)), seqs)
	if live := be.pub("heavy", 999); edgetest.Next(t, c).Seq != live {
		t.Fatalf("after the paced resume, live seq %d did not follow", live)
	} else {
		seqs = append(seqs, live)
	}
	c.Close()
	for _, opt := range []client.SubOption{client.Last(100)} {
		c := edgetest.Dial(t, e, "heavy")
		r, err := c.Subscribe(ctxT(t), "heavy", opt)
		if err != nil {
			t.Fatal(err)
		}
		if r.Recovered == nil || *r.Recovered || !strings.Contains(r.Reason, "bytes") {
			t.Fatalf("reply %+v, want recovered:false for the size", r)
		}
		// About 2 KB each, at most 32 KiB: the newest 15 or so.
		m := edgetest.Next(t, c)
		k := slices.Index(seqs, m.Seq)
		if k < len(seqs)-20 {
			t.Fatalf("replay starts at message %d (seq %d): more than half the queue", k, m.Seq)
		}
		equalSeqs(t, "the newest that fit", append([]uint64{m.Seq}, collect(t, c, len(seqs)-1-k)...), seqs[k:])
		live := be.pub("heavy", 1000)
		if m := edgetest.Next(t, c); m.Seq != live {
			t.Fatalf("after the replay got %+v, want live seq %d", m, live)
		}
		seqs = append(seqs, live)
		c.Close()
	}

	// history is bounded the same way: the newest that fit, and the
	// connection stays.
	h := edgetest.Dial(t, e, "historian")
	msgs, err := h.History(ctxT(t), "heavy", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	raw := sendRaw(t, h, `{"id":77,"op":"history","room":"heavy","limit":100}`)
	if !strings.Contains(raw.Reason, "cut to the newest") || len(raw.Msgs) != len(msgs) {
		t.Fatalf("a cut history says so: reason %q, %d messages", raw.Reason, len(raw.Msgs))
	}
	if len(msgs) < 5 || len(msgs) > 20 || msgs[len(msgs)-1].Seq != seqs[len(seqs)-1] {
		t.Fatalf("history of 100 × 2 KB with a 64 KiB queue: %d messages", len(msgs))
	}
	if err := h.Ping(ctxT(t)); err != nil {
		t.Fatalf("after the history: %v", err)
	}

	c = edgetest.Dial(t, e, "zero")
	r, err = c.Subscribe(ctxT(t), "heavy", client.Last(0))
	if err != nil || r.Recovered != nil {
		t.Fatalf("last 0: %+v %v, want a plain sub", r, err)
	}
	if _, err := c.Subscribe(ctxT(t), "other", client.Since(0), client.Last(0)); err != nil {
		t.Fatalf("since with last 0: %v", err)
	}
}

// A resume from beyond anything the stream ever stored means the stream
// was reset: the edge says so (recovered:false), and the Go client takes
// the reply's seq as its position, so the room's new, lower seqs are not
// discarded as old. A position beyond the room's newest but within the
// stream (seen live on another edge first) is an ordinary resume.
func TestResumeAfterStreamReset(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	be := newBackend(t, srv.URL())
	a1, a2 := be.pub("reset", 1), be.pub("reset", 2)

	c := edgetest.Dial(t, e, "carol")
	r, err := c.Subscribe(ctxT(t), "reset", client.Since(a2+1000))
	if err != nil {
		t.Fatal(err)
	}
	if r.Recovered == nil || *r.Recovered || !strings.Contains(r.Reason, "reset") || r.Seq != a2 {
		t.Fatalf("reply %+v, want recovered:false saying the stream was reset, seq %d", r, a2)
	}
	if seq := be.pub("reset", 4); edgetest.Next(t, c).Seq != seq {
		t.Fatalf("after the reset the new message (seq %d) did not arrive first", seq)
	}

	other := be.pub("elsewhere", 3) // beyond the room's newest, within the stream
	d := edgetest.Dial(t, e, "dave")
	r, err = d.Subscribe(ctxT(t), "reset", client.Since(other))
	if err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume from beyond the room's newest, within the stream: %+v %v", r, err)
	}
	if seq := be.pub("reset", 5); edgetest.Next(t, d).Seq != seq {
		t.Fatalf("dave did not get seq %d next", seq)
	}
	_ = a1
}
