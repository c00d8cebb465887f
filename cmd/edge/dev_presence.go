package main

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/internal/presence"
)

// startDevPresence runs a presence worker in-process on the dev mesh's
// embedded NATS server, so `go run ./cmd/edge` has presence. It has its own
// NATS connection (the edge drains its own at shutdown) and its own context:
// the returned stop is deferred to run after the edge drained, so the
// edge's last leaves and bye still reach it. Presence is an extra in dev: a
// failure is logged, and presence queries then answer unavailable.
func startDevPresence(srv interface{ Shutdown() }, o *options, log *slog.Logger) (stop func()) {
	log = log.With("component", "presence")
	s, ok := srv.(*server.Server)
	if !ok {
		log.Error("dev presence needs the embedded nats-server")
		return func() {}
	}
	cfg := o.nats
	cfg.Name = "parley-presence"
	nc, err := cfg.Connect("", log, nats.InProcessServer(s))
	if err != nil {
		log.Error("dev presence: connect", "err", err)
		return func() {}
	}
	pcfg := presence.DefaultConfig()
	pcfg.Listen = "" // the edge's /metrics is the dev mesh's only HTTP surface
	pcfg.Logger = log
	w, err := presence.New(pcfg, nc)
	if err != nil {
		log.Error("dev presence", "err", err)
		nc.Close()
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(ctx); err != nil {
			log.Error("dev presence stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
		nc.Close()
	}
}
