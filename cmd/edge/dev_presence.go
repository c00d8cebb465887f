package main

import (
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/internal/presence"
)

// startDevPresence runs a presence worker in-process on the dev mesh's
// embedded NATS server, so `go run ./cmd/edge` has presence; without it
// presence queries answer unavailable.
func startDevPresence(srv interface{ Shutdown() }, o *options, log *slog.Logger) (stop func()) {
	log = log.With("component", "presence")
	return startDevWorker(srv, o, log, "presence", func(nc *nats.Conn) (devWorker, error) {
		cfg := presence.DefaultConfig()
		cfg.Listen = "" // the edge's /metrics is the dev mesh's only HTTP surface
		cfg.Logger = log
		cfg.TracerProvider = o.edge.TracerProvider
		return presence.New(cfg, nc)
	}, nil)
}
