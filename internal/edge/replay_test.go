package edge_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/protocol"
)

// publishMany stores n messages on subject with async JetStream publishes,
// a window at a time, and returns their seqs in order. pad bytes in each
// make a replay more than the socket buffers hold, so it cannot all be in
// flight while a test holds its client still.
func publishMany(t *testing.T, js jetstream.JetStream, subject string, n, pad int) []uint64 {
	t.Helper()
	const window = 2000
	seqs := make([]uint64, 0, n)
	for len(seqs) < n {
		futures := make([]jetstream.PubAckFuture, 0, window)
		for i := len(seqs); i < n && len(futures) < window; i++ {
			f, err := js.PublishAsync(subject, fmt.Appendf(nil, `{"from":"svc","data":{"i":%d,"pad":%q}}`, i, strings.Repeat("x", pad)))
			if err != nil {
				t.Fatal(err)
			}
			futures = append(futures, f)
		}
		seqs = append(seqs, awaitAcks(t, futures, 30*time.Second)...)
	}
	return seqs
}

// collectFor reads n messages of room within d (a long replay takes longer
// than next's 10 s under the race detector) and returns their seqs.
func collectFor(t *testing.T, c *client.Client, n int, d time.Duration) []uint64 {
	t.Helper()
	timeout := time.After(d)
	seqs := make([]uint64, 0, n)
	for len(seqs) < n {
		select {
		case m, ok := <-c.Messages():
			if !ok {
				t.Fatalf("connection ended after %d of %d messages: %v", len(seqs), n, c.Err())
			}
			seqs = append(seqs, m.Seq)
		case <-timeout:
			t.Fatalf("got %d of %d messages within %v", len(seqs), n, d)
		}
	}
	return seqs
}

// consumers is how many consumers the chat stream has.
func consumers(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	s, err := js.Stream(ctxT(t), "PARLEY_CHAT")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

// The case: a client offline while 20,000 messages reach its room
// resumes with recovered:true and gets all 20,000 once, in order, then the
// live ones published during and after the replay, with the default queue
// limits (4096 messages / 4 MiB): only pacing keeps it from a slow-consumer
// close. Its consumer is gone afterwards.
func TestLongResumeGetsEveryMessage(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	be := newBackend(t, srv.URL())
	js := natstest.JetStream(t, srv.URL())

	c := edgetest.Dial(t, e, "alice")
	subscribe(t, c, "long")
	first := be.pub("long", -1)
	if m := edgetest.Next(t, c); m.Seq != first {
		t.Fatalf("got %+v", m)
	}
	c.Close()
	// 1 KB each: 20 MB, more than the loopback socket buffers take in, so
	// that the edge's queue is what holds the replay back.
	missed := publishMany(t, js, "chat.room.long", 20_000, 1000)

	c2 := edgetest.Dial(t, e, "alice")
	r, err := c2.Subscribe(ctxT(t), "long", client.Since(first))
	if err != nil {
		t.Fatal(err)
	}
	// The reply's seq is the room's position as this edge knows it: the
	// room stayed subscribed (it lingers), and its live feed may still be
	// behind the burst; what follows it comes live, after the replay.
	if r.Recovered == nil || !*r.Recovered || r.Seq > missed[len(missed)-1] || r.Seq < missed[len(missed)/2] {
		t.Fatalf("resume reply %+v, want recovered:true at a seq up to %d", r, missed[len(missed)-1])
	}
	// Live messages published while the replay runs, then after it.
	during := make(chan []uint64, 1)
	go func() {
		var seqs []uint64
		for i := range 200 {
			ack, err := be.js.Publish(context.Background(), "chat.room.long", fmt.Appendf(nil, `{"data":"during %d"}`, i))
			if err != nil {
				break
			}
			seqs = append(seqs, ack.Sequence)
		}
		during <- seqs
	}()
	// The client stops reading for a moment (an app in the background):
	// unpaced, the replay would overflow its queue meanwhile.
	got := collectFor(t, c2, 2000, time.Minute)
	<-time.After(1500 * time.Millisecond)
	got = append(got, collectFor(t, c2, len(missed)-len(got), 2*time.Minute)...)
	equalSeqs(t, "the replay", got, missed)
	live := <-during
	equalSeqs(t, "published during the replay", collectFor(t, c2, len(live), 30*time.Second), live)
	after := be.pub("long", 99)
	if m := edgetest.Next(t, c2); m.Seq != after {
		t.Fatalf("after the replay got seq %d, want live %d", m.Seq, after)
	}
	noMessage(t, c2, 100*time.Millisecond)
	if d := c2.Duplicates(); d != 0 {
		t.Fatalf("the client dropped %d duplicates", d)
	}
	if n := edgetest.Metric(t, e, `parley_edge_disconnects_total{reason="slow_consumer"}`); n != 0 {
		t.Fatalf("%v slow-consumer closes", n)
	}
	if n := edgetest.Metric(t, e, "parley_edge_replayed_from_consumer_total"); n < 15_000 {
		t.Fatalf("replayed from the consumer: %v, want most of 20,000", n)
	}
	natstest.Eventually(t, 10*time.Second, func() error {
		if n := consumers(t, be.js); n != 0 {
			return fmt.Errorf("%d consumers left on the stream", n)
		}
		if n := edgetest.Metric(t, e, "parley_edge_replays_active"); n != 0 {
			return fmt.Errorf("%v replays active", n)
		}
		return nil
	})
	natstest.Eventually(t, 10*time.Second, func() error {
		if n := edgetest.Metric(t, e, `parley_edge_replays_total{result="completed"}`); n != 1 {
			return fmt.Errorf("replays completed: %v", n)
		}
		return nil
	})
}

// A long replay racing live traffic: a backend publishes steadily while
// the client resumes, and the client stops reading for a while in the
// middle while a burst of more live messages than the member may hold back
// arrives (the replay then reads the stream past its start position).
// Every seq after since arrives exactly once, in order, across the seam.
func TestLongResumeRacingLiveTraffic(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	be := newBackend(t, srv.URL())
	js := natstest.JetStream(t, srv.URL())
	const stored = 20_000
	// Every message of the room is published here: their acks are the
	// ground truth (storedSeqs would make a consumer per message).
	want := publishMany(t, js, "chat.room.race", stored, 1000)

	c := edgetest.Dial(t, e, "bob")
	r, err := c.Subscribe(ctxT(t), "race", client.Since(0))
	if err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume: %+v %v", r, err)
	}
	stop := make(chan struct{})
	steady := make(chan []uint64, 1)
	go func() { // a steady live stream (about 500/s), until told to stop
		var seqs []uint64
		defer func() { steady <- seqs }()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			ack, err := be.js.Publish(context.Background(), "chat.room.race", fmt.Appendf(nil, `{"data":"steady %d"}`, i))
			if err != nil {
				return
			}
			seqs = append(seqs, ack.Sequence)
		}
	}()
	got := collectFor(t, c, 1000, time.Minute)
	// The client stalls (its socket and the edge's queue fill, the replay
	// waits) while more than a queue's worth of live messages arrive.
	want = append(want, publishMany(t, js, "chat.room.race", 6000, 100)...)
	got = append(got, collectFor(t, c, stored, 2*time.Minute)...)
	close(stop)
	want = append(want, <-steady...)
	slices.Sort(want)
	got = append(got, collectFor(t, c, len(want)-len(got), 2*time.Minute)...)
	equalSeqs(t, "every message after since", got, want)
	noMessage(t, c, 100*time.Millisecond)
	if n := edgetest.Metric(t, e, "parley_edge_replayed_from_consumer_total"); n <= stored-1000 {
		t.Fatalf("replayed from the consumer: %v; the replay never read past its start position", n)
	}
	natstest.Eventually(t, 10*time.Second, func() error {
		if n := consumers(t, be.js); n != 0 {
			return fmt.Errorf("%d consumers left on the stream", n)
		}
		return nil
	})
}

// A client that leaves mid-replay, or unsubscribes, leaves no consumer or
// replay behind; after an unsub nothing of the room follows its reply.
func TestLongResumeCleanedUp(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	js := natstest.JetStream(t, srv.URL())
	publishMany(t, js, "chat.room.gone", 30_000, 1000)
	base := consumers(t, js)
	settled := func() {
		t.Helper()
		natstest.Eventually(t, 10*time.Second, func() error {
			if n := consumers(t, js); n != base {
				return fmt.Errorf("%d consumers on the stream, %d before", n, base)
			}
			if n := edgetest.Metric(t, e, "parley_edge_replays_active"); n != 0 {
				return fmt.Errorf("%v replays active", n)
			}
			return nil
		})
	}
	midReplay := func(c *client.Client) {
		t.Helper()
		if _, err := c.Subscribe(ctxT(t), "gone", client.Since(0)); err != nil {
			t.Fatal(err)
		}
		collectFor(t, c, 1500, 30*time.Second) // into the consumer's part
		natstest.Eventually(t, 10*time.Second, func() error {
			if n := consumers(t, js); n != base+1 {
				return fmt.Errorf("%d consumers, want the replay's", n)
			}
			return nil
		})
	}

	c := edgetest.Dial(t, e, "carol")
	midReplay(c)
	c.Close()
	settled()

	d := edgetest.Dial(t, e, "dave")
	midReplay(d)
	// What was queued before the unsub's reply still arrives (read it
	// meanwhile: the client's buffer must not fill up); nothing after it.
	unsubbed := make(chan error, 1)
	uctx := ctxT(t)
	go func() { unsubbed <- d.Unsubscribe(uctx, "gone") }()
	for waiting := true; waiting; {
		select {
		case <-d.Messages():
		case err := <-unsubbed:
			if err != nil {
				t.Fatal(err)
			}
			waiting = false
		}
	}
	// The client's reader handled every message before the reply: those
	// are in its buffer now.
	for drained := false; !drained; {
		select {
		case <-d.Messages():
		default:
			drained = true
		}
	}
	noMessage(t, d, 200*time.Millisecond)
	settled()
	if n := edgetest.Metric(t, e, `parley_edge_replays_total{result="cancelled"}`); n != 2 {
		t.Fatalf("replays cancelled: %v, want 2", n)
	}
	// The connection goes on: a new resume of the room works.
	r, err := d.Subscribe(ctxT(t), "gone", client.Since(29_000))
	if err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume after the unsub: %+v %v", r, err)
	}
	collectFor(t, d, 1000, 30*time.Second)
}

// With --max-replays 1, two concurrent long resumes both complete: the
// second waits for the first's slot. A resume that cannot get a slot
// within the sub's deadline gets unavailable, and the connection stays.
func TestLongResumesBoundedPerEdge(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxReplays = 1; c.RequestTimeout = time.Minute })
	js := natstest.JetStream(t, srv.URL())
	a := publishMany(t, js, "chat.room.one", 10_000, 0)
	b := publishMany(t, js, "chat.room.two", 10_000, 0)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	results := make(chan error, 2)
	for _, tc := range []struct {
		room string
		want []uint64
	}{{"one", a}, {"two", b}} {
		c := edgetest.Dial(t, e, "resumer-"+tc.room)
		go func() {
			r, err := c.Subscribe(ctx, tc.room, client.Since(0))
			if err == nil && (r.Recovered == nil || !*r.Recovered) {
				err = fmt.Errorf("%s: reply %+v", tc.room, r)
			}
			if err == nil {
				// A reply means a slot: one of the two replays is over.
				if n := edgetest.Metric(t, e, "parley_edge_replays_active"); n != 1 {
					err = fmt.Errorf("%s: %v replays active with --max-replays 1", tc.room, n)
				}
			}
			if err == nil {
				var got []uint64
				for len(got) < len(tc.want) {
					select {
					case m := <-c.Messages():
						got = append(got, m.Seq)
					case <-ctx.Done():
						results <- fmt.Errorf("%s: %d of %d messages", tc.room, len(got), len(tc.want))
						return
					}
				}
				for i := range got {
					if got[i] != tc.want[i] {
						err = fmt.Errorf("%s: message %d is seq %d, want %d", tc.room, i, got[i], tc.want[i])
						break
					}
				}
			}
			results <- err
		}()
	}
	for range 2 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	natstest.Eventually(t, 10*time.Second, func() error {
		if n := edgetest.Metric(t, e, `parley_edge_replays_total{result="completed"}`); n != 2 {
			return fmt.Errorf("replays completed: %v, want 2", n)
		}
		return nil
	})

	// A client that stops reading holds its slot (its replay waits for its
	// queue); another resume then gets unavailable after the sub's deadline.
	// The sub waits 2 x RequestTimeout for a slot; a second is long enough
	// that the reads before the wait do not time out on a busy machine.
	short := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxReplays = 1; c.RequestTimeout = time.Second })
	stalled, err := client.Dial(t.Context(), edgetest.URL(short), client.WithUser("stalled"), client.WithMessageBuffer(0))
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	publishMany(t, js, "chat.room.big", 30_000, 1000)
	if _, err := stalled.Subscribe(ctxT(t), "big", client.Since(0)); err != nil {
		t.Fatal(err)
	}
	other := edgetest.Dial(t, short, "other")
	_, err = other.Subscribe(ctxT(t), "two", client.Since(0))
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != protocol.CodeUnavailable || !strings.Contains(ce.Message, "--max-replays") {
		t.Fatalf("a resume beyond --max-replays: %v, want unavailable naming --max-replays", err)
	}
	if err := other.Ping(ctxT(t)); err != nil {
		t.Fatalf("after the refusal: %v", err)
	}
	if n := edgetest.Metric(t, short, `parley_edge_replays_total{result="refused"}`); n != 1 {
		t.Fatalf("replays refused: %v", n)
	}
}

// The Go client through a long resume whose edge drains mid-replay: it
// reconnects to the other edge, resumes from the last message it handed
// over (another long resume there), and the application sees every
// message once, in order. The drained edge's consumer is gone.
func TestLongResumeAcrossAnEdgeDrain(t *testing.T) {
	srv := natstest.StartJetStream(t)
	a, b := startEdge(t, srv.URL(), nil), startEdge(t, srv.URL(), nil)
	js := natstest.JetStream(t, srv.URL())
	want := publishMany(t, js, "chat.room.drain", 20_000, 1000)

	c, err := client.Dial(t.Context(), edgetest.URL(a), client.WithUser("erin"),
		client.WithFallbackURLs(edgetest.URL(b)), client.WithReconnect(client.Backoff{Min: 10 * time.Millisecond, Max: 100 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, err := c.Subscribe(ctxT(t), "drain", client.Since(0)); err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume: %+v %v", r, err)
	}
	got := collectFor(t, c, 3000, time.Minute)
	// The drain flushes what the connection has queued before its 4003:
	// the client reads on meanwhile.
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		drained <- a.Shutdown(ctx)
	}()
	got = append(got, collectFor(t, c, len(want)-len(got), 2*time.Minute)...)
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	equalSeqs(t, "across the drain", got, want)
	if d := c.Duplicates(); d != 0 {
		t.Fatalf("the edges sent %d duplicates", d)
	}
	natstest.Eventually(t, 10*time.Second, func() error {
		if n := consumers(t, js); n != 0 {
			return fmt.Errorf("%d consumers left on the stream", n)
		}
		return nil
	})
}
