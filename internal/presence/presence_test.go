package presence_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/internal/presence"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// Short timings keep the tests fast; the ratios match the defaults.
const (
	testHeartbeat   = 50 * time.Millisecond
	testEdgeTimeout = 600 * time.Millisecond
)

func logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

type testEdge struct {
	*edge.Edge
	nc *nats.Conn
}

func startEdge(t *testing.T, url, id string) *testEdge {
	t.Helper()
	e, nc := edgetest.StartConn(t, url, func(cfg *edge.Config) {
		cfg.Logger = logger()
		cfg.Presence = edge.PresenceConfig{EdgeID: id, Heartbeat: testHeartbeat}
	})
	return &testEdge{Edge: e, nc: nc}
}

type testWorker struct {
	*presence.Worker
	stop func()
}

func startWorker(t *testing.T, url, id string) *testWorker {
	t.Helper()
	nc := natstest.Connect(t, url)
	w, err := presence.New(presence.Config{
		ID: id, Listen: "", Logger: logger(),
		EdgeTimeout: testEdgeTimeout, LeaseInterval: 50 * time.Millisecond, LeaseTTL: 200 * time.Millisecond,
		SyncBackoff: 100 * time.Millisecond,
	}, nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	tw := &testWorker{Worker: w}
	var stopped bool
	tw.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker %s: %v", id, err)
		}
	}
	t.Cleanup(tw.stop)
	natstest.Eventually(t, 10*time.Second, func() error {
		if !w.Ready() {
			return fmt.Errorf("worker %s not ready", id)
		}
		return nil
	})
	return tw
}

func waitWriter(t *testing.T, ws ...*testWorker) *testWorker {
	t.Helper()
	var writer *testWorker
	natstest.Eventually(t, 5*time.Second, func() error {
		n := 0
		for _, w := range ws {
			if w.Writer() {
				writer = w
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%d writers among %d replicas", n, len(ws))
		}
		return nil
	})
	return writer
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func sub(t *testing.T, c *client.Client, room string) {
	t.Helper()
	if _, err := c.Subscribe(ctxT(t), room); err != nil {
		t.Fatalf("sub %s: %v", room, err)
	}
}

// expect reads the next presence pushes of c and checks they are exactly
// want ("join:bob"), in any order. Tests follow an action that must not
// announce with one that must, so a stray or doubled push shows up here as
// the wrong next event instead of needing a timed wait for silence.
func expect(t *testing.T, c *client.Client, want ...string) {
	t.Helper()
	left := slices.Clone(want)
	for len(left) > 0 {
		select {
		case ev := <-c.Events():
			got := ev.Op + ":" + ev.User
			i := slices.Index(left, got)
			if i < 0 || ev.Room == "" {
				t.Fatalf("got push %s (room %q), want one of %v", got, ev.Room, left)
			}
			left = slices.Delete(left, i, i+1)
		case <-time.After(5 * time.Second):
			t.Fatalf("no push within 5s; still waiting for %v", left)
		}
	}
}

func presenceIs(t *testing.T, c *client.Client, room string, want ...string) {
	t.Helper()
	natstest.Eventually(t, 5*time.Second, func() error {
		users, err := c.Presence(ctxT(t), room)
		if err != nil {
			return err
		}
		if !slices.Equal(users, want) {
			return fmt.Errorf("presence %s = %v, want %v", room, users, want)
		}
		return nil
	})
}

func record(t *testing.T, kv jetstream.KeyValue, room, user string) (pjs.PresenceRecord, bool) {
	t.Helper()
	e, err := kv.Get(ctxT(t), pjs.PresenceKey(room, user))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return pjs.PresenceRecord{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	var r pjs.PresenceRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		t.Fatal(err)
	}
	return r, true
}

func bucket(t *testing.T, url string) jetstream.KeyValue {
	t.Helper()
	kv, err := natstest.JetStream(t, url).KeyValue(t.Context(), pjs.PresenceBucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func TestPresenceJoinLeaveMultiTabAndQueries(t *testing.T) {
	srv := natstest.StartJetStream(t)
	w1, w2 := startWorker(t, srv.URL(), "w1"), startWorker(t, srv.URL(), "w2")
	waitWriter(t, w1, w2)
	e1, e2 := startEdge(t, srv.URL(), "e1"), startEdge(t, srv.URL(), "e2")

	alice := edgetest.Dial(t, e1.Edge, "alice")
	sub(t, alice, "lobby")
	expect(t, alice, "join:alice")

	// bob opens two tabs on two edges: one join. carol's join is next,
	// so no second join of bob came before it.
	bob1 := edgetest.Dial(t, e1.Edge, "bob")
	sub(t, bob1, "lobby")
	expect(t, alice, "join:bob")
	bob2 := edgetest.Dial(t, e2.Edge, "bob")
	sub(t, bob2, "lobby")
	carol := edgetest.Dial(t, e2.Edge, "carol")
	sub(t, carol, "lobby")
	expect(t, alice, "join:carol")
	expect(t, carol, "join:carol")

	presenceIs(t, alice, "lobby", "alice", "bob", "carol")
	presenceIs(t, carol, "lobby", "alice", "bob", "carol")
	presenceIs(t, carol, "empty-room")
	kv := bucket(t, srv.URL())
	natstest.Eventually(t, 5*time.Second, func() error {
		r, ok := record(t, kv, "lobby", "bob")
		if !ok || r.Conns != 2 || r.Edges["e1"].Conns != 1 || r.Edges["e2"].Conns != 1 || r.Since == 0 {
			return fmt.Errorf("bob's record %+v (present %v)", r, ok)
		}
		if r, ok := record(t, kv, "", "bob"); !ok || r.Conns != 2 {
			return fmt.Errorf("bob's online record %+v", r)
		}
		return nil
	})

	// One tab closes: bob stays. dave's join is the next push.
	bob1.Close()
	dave := edgetest.Dial(t, e1.Edge, "dave")
	sub(t, dave, "lobby")
	expect(t, alice, "join:dave")
	presenceIs(t, alice, "lobby", "alice", "bob", "carol", "dave")

	// The last tab leaves: one leave, pushed on both edges.
	if err := bob2.Unsubscribe(ctxT(t), "lobby"); err != nil {
		t.Fatal(err)
	}
	expect(t, alice, "leave:bob")
	expect(t, carol, "join:dave", "leave:bob")
	presenceIs(t, dave, "lobby", "alice", "carol", "dave")
	natstest.Eventually(t, 5*time.Second, func() error {
		if r, ok := record(t, kv, "lobby", "bob"); ok {
			return fmt.Errorf("bob still in the bucket: %+v", r)
		}
		if r, ok := record(t, kv, "", "bob"); !ok || r.Conns != 1 {
			return fmt.Errorf("bob (one connection left) online record %+v present %v", r, ok)
		}
		return nil
	})
	// bob joins again: the purge marker is replaced (compare-and-set on
	// the marker's revision), and the join is announced again.
	sub(t, bob2, "lobby")
	expect(t, alice, "join:bob")

	// Bad input gets a coded error and the connection stays.
	_, err := alice.Presence(ctxT(t), "no.dots")
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != "bad_request" {
		t.Fatalf("presence of a bad room name: %v", err)
	}
}

func TestPresenceEdgeKilledWithoutWarning(t *testing.T) {
	srv := natstest.StartJetStream(t)
	w1, w2 := startWorker(t, srv.URL(), "w1"), startWorker(t, srv.URL(), "w2")
	waitWriter(t, w1, w2)
	e1, e2 := startEdge(t, srv.URL(), "e1"), startEdge(t, srv.URL(), "e2")

	carol := edgetest.Dial(t, e2.Edge, "carol")
	sub(t, carol, "lobby")
	expect(t, carol, "join:carol")
	for _, u := range []string{"alice", "bob", "dave"} {
		sub(t, edgetest.Dial(t, e1.Edge, u), "lobby")
		expect(t, carol, "join:"+u)
	}
	sub(t, edgetest.Dial(t, e2.Edge, "dave"), "lobby") // dave has a tab on the surviving edge too
	presenceIs(t, carol, "lobby", "alice", "bob", "carol", "dave")

	// e1 loses NATS for good: no disconnects, no bye, no heartbeats.
	killed := time.Now()
	e1.nc.Close()
	expect(t, carol, "leave:alice", "leave:bob")
	if d := time.Since(killed); d > testEdgeTimeout+time.Second {
		t.Fatalf("dead edge's users removed after %v (timeout %v)", d, testEdgeTimeout)
	}
	erin := edgetest.Dial(t, e2.Edge, "erin")
	sub(t, erin, "lobby")
	expect(t, carol, "join:erin") // nothing else (no leave of dave or carol) came first
	presenceIs(t, carol, "lobby", "carol", "dave", "erin")
	kv := bucket(t, srv.URL())
	natstest.Eventually(t, 5*time.Second, func() error {
		r, ok := record(t, kv, "lobby", "dave")
		if !ok || r.Conns != 1 || len(r.Edges) != 1 {
			return fmt.Errorf("dave's record %+v", r)
		}
		return nil
	})
}

func TestPresenceWorkerRestarts(t *testing.T) {
	srv := natstest.StartJetStream(t)
	w1, w2 := startWorker(t, srv.URL(), "w1"), startWorker(t, srv.URL(), "w2")
	first := waitWriter(t, w1, w2)
	e1, e2 := startEdge(t, srv.URL(), "e1"), startEdge(t, srv.URL(), "e2")

	alice := edgetest.Dial(t, e1.Edge, "alice")
	sub(t, alice, "lobby")
	expect(t, alice, "join:alice")
	bob := edgetest.Dial(t, e2.Edge, "bob")
	sub(t, bob, "lobby")
	expect(t, alice, "join:bob")
	carol := edgetest.Dial(t, e2.Edge, "carol")
	sub(t, carol, "lobby")
	expect(t, alice, "join:carol")

	// The writer stops; the other replica takes over and keeps serving.
	second := w1
	if first == w1 {
		second = w2
	}
	first.stop()
	waitWriter(t, second)
	dave := edgetest.Dial(t, e1.Edge, "dave")
	sub(t, dave, "lobby")
	expect(t, alice, "join:dave")

	// A fresh replica joins, then the current writer goes too: the fresh
	// one takes over from the bucket; nobody is announced as leaving.
	third := startWorker(t, srv.URL(), "w3")
	second.stop()
	waitWriter(t, third)
	presenceIs(t, alice, "lobby", "alice", "bob", "carol", "dave")

	// All replicas down while people come and go; a restarted one learns
	// the difference from the edges and announces only that.
	third.stop()
	if err := bob.Unsubscribe(ctxT(t), "lobby"); err != nil {
		t.Fatal(err)
	}
	erin := edgetest.Dial(t, e2.Edge, "erin")
	sub(t, erin, "lobby")
	fourth := startWorker(t, srv.URL(), "w4")
	waitWriter(t, fourth)
	expect(t, alice, "leave:bob", "join:erin")
	presenceIs(t, alice, "lobby", "alice", "carol", "dave", "erin")
	frank := edgetest.Dial(t, e1.Edge, "frank")
	sub(t, frank, "lobby")
	expect(t, alice, "join:frank") // no spurious leave (or re-join) before it
	kv := bucket(t, srv.URL())
	natstest.Eventually(t, 5*time.Second, func() error {
		keys, err := kv.ListKeys(ctxT(t))
		if err != nil {
			return err
		}
		var got []string
		for k := range keys.Keys() {
			got = append(got, k)
		}
		slices.Sort(got)
		want := []string{"room.lobby.alice", "room.lobby.carol", "room.lobby.dave", "room.lobby.erin", "room.lobby.frank",
			"user.alice", "user.bob", "user.carol", "user.dave", "user.erin", "user.frank", "writer"}
		if !slices.Equal(got, want) {
			return fmt.Errorf("bucket keys %v, want %v", got, want)
		}
		return nil
	})
}
