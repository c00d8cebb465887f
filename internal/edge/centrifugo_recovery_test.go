package edge_test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/centrifugal/centrifuge-go"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

// cfClient is centrifuge-go connected as carol (subscribe and publish
// anywhere) to the Centrifugo endpoint at addr, reconnecting quickly so a
// restart costs the test milliseconds, not the SDK's default backoff.
func cfClient(t *testing.T, addr string, newClient cfNewClient) (*centrifuge.Client, chan centrifuge.ConnectingEvent) {
	t.Helper()
	tok := token(t, "carol", time.Hour, auth.Grants{Subscribe: []string{"*"}, Publish: []string{"*"}})
	c := newClient("ws://"+addr+"/connection/websocket", centrifuge.Config{
		Token: tok, MinReconnectDelay: 50 * time.Millisecond, MaxReconnectDelay: 300 * time.Millisecond,
	})
	t.Cleanup(c.Close)
	// A disconnect the SDK will reconnect from is a move to connecting.
	connecting := make(chan centrifuge.ConnectingEvent, 16)
	c.OnConnecting(func(ev centrifuge.ConnectingEvent) { connecting <- ev })
	return c, connecting
}

// recvOffsets is the offsets of the next n publications of s.
func recvOffsets(t *testing.T, s *cfSub, n int) []uint64 {
	t.Helper()
	out := make([]uint64, 0, n)
	for len(out) < n {
		out = append(out, recvCF(t, s.pubs, "publication").Offset)
	}
	return out
}

// noMorePubs fails if s gets another publication soon: a duplicate of a
// recovered message would come right after the recovery.
func noMorePubs(t *testing.T, s *cfSub) {
	t.Helper()
	select {
	case p := <-s.pubs:
		t.Fatalf("duplicate or extra publication at offset %d", p.Offset)
	case <-time.After(300 * time.Millisecond):
	}
}

// The edge is drained and started again on the same address and NATS while
// a backend service keeps publishing: centrifuge-go is told 3001 (shutting
// down, reconnect), reconnects once the edge is back, resubscribes with its
// offset and epoch and gets recovered: true and every message once, in
// stream order, live ones and those published while no edge ran. In both
// formats: a long resume's pushes are framed by the same writer.
func TestCentrifugoSDKRecoversAcrossEdgeRestart(t *testing.T) {
	t.Run("json", func(t *testing.T) { testCentrifugoSDKRecoversAcrossEdgeRestart(t, centrifuge.NewJsonClient) })
	t.Run("protobuf", func(t *testing.T) { testCentrifugoSDKRecoversAcrossEdgeRestart(t, centrifuge.NewProtobufClient) })
}

func testCentrifugoSDKRecoversAcrossEdgeRestart(t *testing.T, newClient cfNewClient) {
	srv := natstest.StartJetStream(t)
	r := edgetest.StartRestartable(t, srv.URL(), func(c *edge.Config) { c.Auth = auth.Config{HMACSecret: testSecret} })
	cf, connecting := cfClient(t, r.Addr(), newClient)
	s := newCFSub(t, cf, "restart", centrifuge.SubscriptionConfig{})
	if err := cf.Connect(); err != nil {
		t.Fatal(err)
	}
	recvCF(t, connecting, "first connecting")
	first := recvCF(t, s.subscribed, "subscribe")

	be := newBackend(t, srv.URL())
	const total = 60
	var (
		mu        sync.Mutex
		published []uint64
		stopped   atomic.Bool
		whileDown atomic.Int32
		done      = make(chan struct{})
	)
	go func() { // b.pub must not fail the test from here: publish directly
		defer close(done)
		for i := range total {
			ack, err := be.js.Publish(t.Context(), "chat.room.restart", fmt.Appendf(nil, `{"from":"svc","data":%d}`, i))
			if err != nil {
				t.Errorf("backend publish %d: %v", i, err)
				return
			}
			if stopped.Load() {
				whileDown.Add(1)
			}
			mu.Lock()
			published = append(published, ack.Sequence)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	// Some messages live, then the restart in the middle of the stream.
	live := recvOffsets(t, s, 10)
	stopped.Store(true)
	if err := r.Stop(); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if ev := recvCF(t, connecting, "reconnecting"); ev.Code != 3001 {
		t.Fatalf("disconnected with %d (%s), want 3001 (shutting down, reconnect)", ev.Code, ev.Reason)
	}
	time.Sleep(150 * time.Millisecond) // publishes go on with no edge at all
	stopped.Store(false)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	<-done
	if whileDown.Load() == 0 {
		t.Fatal("nothing was published while the edge was down: the test proved nothing")
	}
	again := recvCF(t, s.subscribed, "resubscribe after the restart")
	if !again.WasRecovering || !again.Recovered || again.StreamPosition == nil || again.StreamPosition.Epoch != first.StreamPosition.Epoch {
		t.Fatalf("resubscribed: %+v, want was_recovering and recovered in epoch %s", again, first.StreamPosition.Epoch)
	}
	got := append(live, recvOffsets(t, s, total-len(live))...)
	mu.Lock()
	want := slices.Clone(published)
	mu.Unlock()
	if !slices.Equal(got, want) {
		t.Fatalf("offsets across the restart:\n got %v\nwant %v", got, want)
	}
	noMorePubs(t, s)
	t.Logf("%d messages, %d published with no edge running, all recovered once in order", total, whileDown.Load())
}

// A hole past retention: the stream keeps 5 messages per room and no
// archive runs. While the edge that served the client runs, its room cache
// (a room stays subscribed, --room-cache messages deep, for 30 s after its
// last subscriber left) still holds what retention dropped, so a quick
// reconnect is recovered with every message. After an edge restart nothing
// holds them: the SDK's resubscribe is answered recovered: false (the
// application must reload), with the 5 messages the stream still holds, in
// order, and live ones after them.
func TestCentrifugoSDKHolePastRetention(t *testing.T) {
	srv := natstest.StartJetStream(t)
	r := edgetest.StartRestartable(t, srv.URL(), func(c *edge.Config) {
		c.Auth = auth.Config{HMACSecret: testSecret}
		c.Stream.MaxMsgsPerSubject = 5
	})
	cf, _ := cfClient(t, r.Addr(), centrifuge.NewJsonClient)
	s := newCFSub(t, cf, "small", centrifuge.SubscriptionConfig{})
	if err := cf.Connect(); err != nil {
		t.Fatal(err)
	}
	recvCF(t, s.subscribed, "subscribe")
	be := newBackend(t, srv.URL())
	seen := be.pub("small", 0)
	if got := recvOffsets(t, s, 1); got[0] != seen {
		t.Fatalf("live offset %d, want %d", got[0], seen)
	}
	away := func() []uint64 {
		var missed []uint64
		for i := range 20 {
			missed = append(missed, be.pub("small", 1+i))
		}
		return missed
	}

	// Away briefly: the edge's room cache has all 20.
	if err := cf.Disconnect(); err != nil {
		t.Fatal(err)
	}
	missed := away()
	if err := cf.Connect(); err != nil {
		t.Fatal(err)
	}
	if again := recvCF(t, s.subscribed, "resubscribe"); !again.WasRecovering || !again.Recovered {
		t.Fatalf("resubscribed to the same edge: %+v, want recovered from its room cache", again)
	}
	if got := recvOffsets(t, s, 20); !slices.Equal(got, missed) {
		t.Fatalf("recovered from the room cache: %v, want %v", got, missed)
	}
	noMorePubs(t, s)

	// Away across an edge restart: only the stream's 5 are left.
	if err := cf.Disconnect(); err != nil {
		t.Fatal(err)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	missed = away()
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cf.Connect(); err != nil {
		t.Fatal(err)
	}
	again := recvCF(t, s.subscribed, "resubscribe after the restart")
	if !again.WasRecovering || again.Recovered {
		t.Fatalf("resubscribed past retention: %+v, want was_recovering and not recovered", again)
	}
	if got := recvOffsets(t, s, 5); !slices.Equal(got, missed[15:]) {
		t.Fatalf("what the stream still holds: %v, want %v", got, missed[15:])
	}
	noMorePubs(t, s)
	next := be.pub("small", 99)
	if got := recvOffsets(t, s, 1); got[0] != next {
		t.Fatalf("live offset %d, want %d", got[0], next)
	}
}
