package loadgen_test

import (
	"context"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/loadgen"
	"github.com/parley-mesh/parley/internal/natstest"
)

// The test binary doubles as the load tool's worker process, as the real
// binary does: Run starts "<exe> worker".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := loadgen.RunWorker(context.Background(), os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A short run of the real tool against a real edge, so the tool cannot rot:
// 1,000 connections in 20 rooms, a backend publishing, every message counted.
func TestSmokeFanout(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := edgetest.Start(t, srv.URL(), nil)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	res, err := loadgen.Run(ctx, loadgen.Spec{
		Scenario: loadgen.Fanout, URLs: []string{"ws://" + e.Addr() + "/ws"}, NATS: srv.URL(),
		Conns: 1000, Workers: 2, Rate: 2000, Rooms: 20, MsgRate: 5, Payload: 16,
		Duration: 3 * time.Second, Sources: 2, Progress: time.Second,
	}, exe, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res.Print(io.Discard)
	if res.Connected != 1000 || res.Subscribed != 1000 {
		t.Fatalf("connected %d, subscribed %d, errors %v", res.Connected, res.Subscribed, res.ConnectErrors)
	}
	// 20 rooms × 5 msg/s × 3 s to 50 subscribers each: about 15,000.
	if res.BackendPub < 100 || res.Counts.Delivered < 50*res.BackendPub {
		t.Fatalf("published %d, delivered %d", res.BackendPub, res.Counts.Delivered)
	}
	if res.Undelivered != 0 || res.Counts.Dups != 0 || res.Counts.Disorder != 0 {
		t.Fatalf("undelivered %d, duplicates %d, out of order %d", res.Undelivered, res.Counts.Dups, res.Counts.Disorder)
	}
	if res.Latency.Count == 0 || res.Latency.P50 <= 0 || res.Latency.P50 > res.Latency.Max {
		t.Fatalf("latency %+v", res.Latency)
	}
}

// The reconnect scenario with a backlog: every connection drops, 20,000
// messages reach its room meanwhile (PARLEY_LOADGEN_BACKLOG=100000 for the
// documented long one; docs/benchmarks.md has the command without the race
// detector), and each resumes with since; each gets all of them once, in
// order (a long resume through an ordered consumer), then the live ones.
func TestReconnectWithBacklog(t *testing.T) {
	srv := natstest.StartJetStream(t)
	// The stream keeps 100,000 messages per room by default: more than the
	// backlog and what came before it, so the resumes can be whole.
	e := edgetest.Start(t, srv.URL(), func(c *edge.Config) { c.Stream.MaxMsgsPerSubject = 200_000 })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	backlog := 20_000
	if v := os.Getenv("PARLEY_LOADGEN_BACKLOG"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("PARLEY_LOADGEN_BACKLOG=%q: want a positive count", v)
		}
		backlog = n
	}
	res, err := loadgen.Run(ctx, loadgen.Spec{
		Scenario: loadgen.Reconnect, URLs: []string{"ws://" + e.Addr() + "/ws"}, NATS: srv.URL(),
		Conns: 2, Workers: 1, Rate: 100, Rooms: 1, MsgRate: 5, Payload: 16, Backlog: backlog,
		// The run lasts Duration; the drop comes at a third of it, and the
		// replays must be done before its end (a race build replays some
		// thousand messages a second per connection on a busy machine).
		Duration: 20*time.Second + time.Duration(backlog/2000)*time.Second, Sources: 1, Progress: 5 * time.Second,
	}, exe, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res.Print(os.Stderr)
	if res.Counts.Resumed != 2 || res.Counts.NotRecovered != 0 || res.CaughtUp != 2 {
		t.Fatalf("resumed %d (not recovered %d), caught up %d, errors %v", res.Counts.Resumed, res.Counts.NotRecovered, res.CaughtUp, res.ConnectErrors)
	}
	if res.Undelivered != 0 || res.Counts.Dups != 0 || res.Counts.Disorder != 0 || res.Counts.Dropped != 0 {
		t.Fatalf("undelivered %d, duplicates %d, out of order %d, dropped %d", res.Undelivered, res.Counts.Dups, res.Counts.Disorder, res.Counts.Dropped)
	}
	if res.Counts.Delivered < uint64(2*backlog) {
		t.Fatalf("delivered %d, want at least %d", res.Counts.Delivered, 2*backlog)
	}
}
