// Package edgetest starts real edges for other packages' tests: an insecure
// edge (?user= accepted) on a random loopback port, on its own NATS
// connection, drained when the test ends.
package edgetest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/natstest"
)

// Start starts an edge on NATS at url; mutate (may be nil) adjusts the
// configuration first.
func Start(t testing.TB, url string, mutate func(*edge.Config)) *edge.Edge {
	t.Helper()
	cfg := edge.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Insecure = true
	if mutate != nil {
		mutate(&cfg)
	}
	nc := natstest.Connect(t, url, nats.MaxReconnects(-1))
	e, err := edge.New(cfg, nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.Shutdown(ctx)
	})
	return e
}

// URL is the edge's WebSocket URL.
func URL(e *edge.Edge) string { return "ws://" + e.Addr() + "/ws" }
