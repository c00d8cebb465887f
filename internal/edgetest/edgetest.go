// Package edgetest starts real edges for tests, the edge's own and other
// packages': an insecure edge (?user= accepted) on a random loopback port,
// on its own NATS connection, drained when the test ends; clients of it
// (client.go); and its metrics, read from its registry (metric.go).
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
	e, _ := StartConn(t, url, mutate)
	return e
}

// StartConn is Start that also returns the edge's NATS connection, which a
// test may close to cut the edge off NATS (as a crash would); natsOpts are
// added to the connection's options.
func StartConn(t testing.TB, url string, mutate func(*edge.Config), natsOpts ...nats.Option) (*edge.Edge, *nats.Conn) {
	t.Helper()
	cfg := edge.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Insecure = true
	if mutate != nil {
		mutate(&cfg)
	}
	nc := natstest.Connect(t, url, append([]nats.Option{nats.MaxReconnects(-1)}, natsOpts...)...)
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
	return e, nc
}

// URL is the edge's WebSocket URL.
func URL(e *edge.Edge) string { return "ws://" + e.Addr() + "/ws" }
