package loadgen_test

import (
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/loadgen"
	"github.com/parley-mesh/parley/internal/natstest"
)

func run(t *testing.T, spec loadgen.Spec) *loadgen.Result {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if spec.Workers == 0 {
		spec.Workers = 2
	}
	if spec.Sources == 0 {
		spec.Sources = 2
	}
	spec.Progress = time.Second
	res, err := loadgen.Run(ctx, spec, exe, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		res.Print(os.Stderr)
	}
	return res
}

// checkIdle: every connection established, a connect rate, and the RSS
// growth of the test process's own kind reported.
func checkIdle(t *testing.T, res *loadgen.Result, conns int) {
	t.Helper()
	if res.Connected != conns || res.Subscribed != conns || len(res.ConnectErrors) != 0 {
		t.Fatalf("connected %d, subscribed %d of %d, errors %v", res.Connected, res.Subscribed, conns, res.ConnectErrors)
	}
	if res.ConnectsPerS <= 0 || res.ConnectSeconds <= 0 || res.Counts.Dropped != 0 {
		t.Fatalf("connects/s %.0f in %.2fs, dropped %d", res.ConnectsPerS, res.ConnectSeconds, res.Counts.Dropped)
	}
}

// checkSaturate: the ramp ran its steps (all held on an idle machine, or
// stopped with a reason), each counted the same way.
func checkSaturate(t *testing.T, res *loadgen.Result, steps int) {
	t.Helper()
	if len(res.Steps) == 0 || res.StopReason == "" {
		t.Fatalf("steps %+v, stop reason %q", res.Steps, res.StopReason)
	}
	for _, st := range res.Steps {
		if st.Published == 0 || st.Expected == 0 || st.Delivered == 0 || st.Latency.Count == 0 {
			t.Fatalf("step %+v", st)
		}
		// Small steps on loopback: nothing may be lost, repeated or reordered.
		if st.Undelivered != 0 || st.Dups != 0 || st.Disorder != 0 || st.PubErrors != 0 {
			t.Fatalf("step %d: undelivered %d, dups %d, disorder %d, publish errors %d", st.Step, st.Undelivered, st.Dups, st.Disorder, st.PubErrors)
		}
	}
	if len(res.Steps) != steps && res.Steps[len(res.Steps)-1].Held {
		t.Fatalf("%d steps of %d, stopped: %s", len(res.Steps), steps, res.StopReason)
	}
	if res.Held == nil && res.Steps[0].Held {
		t.Fatal("no step held recorded")
	}
}

func saturate(base loadgen.Spec) loadgen.Spec {
	base.Scenario = loadgen.Saturate
	base.StartRate, base.StepFactor, base.MaxSteps = 50, 2, 3
	base.StepDuration, base.Grace = 500*time.Millisecond, 300*time.Millisecond
	// Generous: the race detector on a busy machine; the test checks the
	// counting, not the speed.
	base.P99Limit = 2 * time.Second
	base.Duration = time.Second
	return base
}

// Target parley, the driven path: idle (connect rate, KiB per connection),
// then a short saturate ramp in one room and in several.
func TestTargetParley(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := edgetest.Start(t, srv.URL(), nil)
	base := loadgen.Spec{Target: loadgen.TargetParley, URLs: []string{edgetest.URL(e)}, NATS: srv.URL(), Payload: 16}

	idle := base
	idle.Scenario, idle.Conns, idle.Rooms, idle.Duration = loadgen.Idle, 300, 10, 200*time.Millisecond
	idle.Rate, idle.DialConcurrency = 0, 16 // unpaced
	idle.Procs = []string{"loadgen.test"}   // the edge runs inside this process
	res := run(t, idle)
	checkIdle(t, res, 300)
	if len(res.RSSGrowth) != 1 || res.RSSGrowth[0].Name != "loadgen.test" {
		t.Fatalf("rss growth %+v", res.RSSGrowth)
	}

	for _, rooms := range []int{1, 5} {
		s := saturate(base)
		s.Conns, s.Rooms, s.Rate = 50, rooms, 0
		checkSaturate(t, run(t, s), 3)
	}
}

// startNATSWebsocket is an embedded nats-server with its WebSocket listener
// (no TLS) on loopback.
func startNATSWebsocket(t *testing.T) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Websocket: server.WebsocketOpts{Host: "127.0.0.1", Port: -1, NoTLS: true}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// Target nats: nats-server's own WebSocket listener, the NATS protocol
// parsed as a stream; idle, a fanout and a short saturate ramp.
func TestTargetNATS(t *testing.T) {
	s := startNATSWebsocket(t)
	base := loadgen.Spec{Target: loadgen.TargetNATS, URLs: []string{s.WebsocketURL()}, NATS: s.ClientURL(), Payload: 16, Rate: 0}

	idle := base
	idle.Scenario, idle.Conns, idle.Rooms, idle.Duration = loadgen.Idle, 300, 10, 200*time.Millisecond
	checkIdle(t, run(t, idle), 300)

	fan := base
	fan.Scenario, fan.Conns, fan.Rooms, fan.MsgRate, fan.Duration, fan.Grace = loadgen.Fanout, 100, 4, 20, time.Second, 500*time.Millisecond
	res := run(t, fan)
	// 4 rooms × 20 msg/s × 1 s to 25 subscribers each: 2,000.
	if res.BackendPub < 70 || res.Counts.Delivered != 25*res.BackendPub || res.Undelivered != 0 || res.Counts.Dups != 0 || res.Counts.Disorder != 0 {
		t.Fatalf("published %d, delivered %d, undelivered %d, dups %d, disorder %d", res.BackendPub, res.Counts.Delivered, res.Undelivered, res.Counts.Dups, res.Counts.Disorder)
	}
	if res.Latency.Count != int64(res.Counts.Delivered) {
		t.Fatalf("latency samples %d of %d", res.Latency.Count, res.Counts.Delivered)
	}

	sat := saturate(base)
	sat.Conns, sat.Rooms = 50, 1
	checkSaturate(t, run(t, sat), 3)
}

// The centrifugo driver against the Parley edge's Centrifugo-compatible
// endpoint, with tokens it mints (HS256, sub = the user, the edge's
// secret): every connection connects and subscribes. (The edge has no
// Centrifugo HTTP API: receiving is checked with Parley's publisher, in
// target_internal_test.go.)
func TestTargetCentrifugoOnParley(t *testing.T) {
	const secret = "loadgen-test-secret-0123456789abcdef"
	srv := natstest.StartJetStream(t)
	e := edgetest.Start(t, srv.URL(), func(c *edge.Config) { c.Auth = auth.Config{HMACSecret: []byte(secret)} })
	res := run(t, loadgen.Spec{Target: loadgen.TargetCentrifugo, Scenario: loadgen.Idle,
		URLs: []string{"ws://" + e.Addr() + "/connection/websocket"}, JWTSecret: secret,
		Conns: 200, Rooms: 7, Rate: 0, Duration: 200 * time.Millisecond})
	checkIdle(t, res, 200)
}
