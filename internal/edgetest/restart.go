package edgetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/internal/presence"
)

// Restartable is an edge that a test stops (drained, as SIGTERM does:
// clients are told to reconnect elsewhere) and starts again on the same
// loopback address and NATS server, so that clients configured with one
// URL reconnect to the new edge: a restart as an operator does it. Stop and
// Start may be called from any goroutine (a control API's handler), hence
// errors rather than t.Fatal.
type Restartable struct {
	url    string
	addr   string
	mutate func(*edge.Config)

	mu sync.Mutex
	e  *edge.Edge // nil while stopped
}

// StartRestartable starts an insecure edge on NATS at url on a free
// loopback port; mutate (may be nil) adjusts each start's configuration.
// It is stopped when the test ends.
func StartRestartable(t testing.TB, url string, mutate func(*edge.Config)) *Restartable {
	t.Helper()
	r := &Restartable{url: url, addr: FreeAddr(t), mutate: mutate}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop() })
	return r
}

// Addr is the edge's host:port, the same across restarts.
func (r *Restartable) Addr() string { return r.addr }

// Edge is the running edge, nil while stopped.
func (r *Restartable) Edge() *edge.Edge {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.e
}

// Start starts the edge unless it runs.
func (r *Restartable) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.e != nil {
		return nil
	}
	cfg := edge.DefaultConfig()
	cfg.Listen = r.addr
	cfg.Insecure = true
	if r.mutate != nil {
		r.mutate(&cfg)
	}
	// Not natstest.Connect: that fails the test from this goroutine and
	// closes at the test's end; Shutdown drains this connection.
	nc, err := nats.Connect(r.url, nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect the edge to NATS: %w", err)
	}
	e, err := edge.New(cfg, nc)
	if err != nil {
		nc.Close()
		return err
	}
	if err := e.Start(context.Background()); err != nil {
		nc.Close()
		return fmt.Errorf("start the edge on %s: %w", r.addr, err)
	}
	r.e = e
	return nil
}

// Stop drains the edge; until Start the address refuses connections.
func (r *Restartable) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.e == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := r.e.Shutdown(ctx)
	r.e = nil
	return err
}

// FreeAddr is a loopback host:port that nothing listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// ServeControl serves a test's control API (what its Node tests call) on
// a loopback port until the test ends, and returns its base URL.
func ServeControl(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return "http://" + ln.Addr().String()
}

// ReplyJSON answers a control request: v as JSON, or err as a 500.
func ReplyJSON(w http.ResponseWriter, v any, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// StartPresence runs a presence worker on NATS at url until the test
// ends, and fails the test if it stops by itself with an error.
func StartPresence(t testing.TB, url string) {
	t.Helper()
	cfg := presence.DefaultConfig()
	cfg.Listen = ""
	w, err := presence.New(cfg, natstest.Connect(t, url, nats.MaxReconnects(-1)))
	if err != nil {
		t.Fatal(err)
	}
	RunUntilCleanup(t, "presence", w.Run)
}

// RunUntilCleanup runs a worker until the test ends, and fails the test if
// it stops by itself with an error.
func RunUntilCleanup(t testing.TB, name string, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Errorf("%s stopped: %v", name, err)
		}
	})
}
