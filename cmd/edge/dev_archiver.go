package main

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/internal/archive"
)

// startDevArchiver runs the archiver in-process on the dev mesh's embedded
// NATS server, with SQLite in the data directory (<data>/archive.db), so
// `go run ./cmd/edge` keeps history past the stream's retention. It has its
// own NATS connection and context; the returned stop runs after the edge
// drained, so the last messages still get archived (the rest wait in the
// stream for the next start). The archive is an extra in dev: a failure is
// logged and the edge answers from the stream alone.
func startDevArchiver(srv interface{ Shutdown() }, o *options, log *slog.Logger) (stop func()) {
	log = log.With("component", "archiver")
	s, ok := srv.(*server.Server)
	if !ok {
		log.Error("dev archiver needs the embedded nats-server")
		return func() {}
	}
	path := filepath.Join(o.data, "archive.db")
	store, err := archive.OpenSQLite(context.Background(), path)
	if err != nil {
		log.Error("dev archiver: open store", "err", err)
		return func() {}
	}
	cfg := o.nats
	cfg.Name = "parley-archiver"
	nc, err := cfg.Connect("", log, nats.InProcessServer(s))
	if err != nil {
		log.Error("dev archiver: connect", "err", err)
		store.Close()
		return func() {}
	}
	acfg := archive.DefaultConfig()
	acfg.Logger = log
	a, err := archive.New(acfg, nc, store)
	if err != nil {
		log.Error("dev archiver", "err", err)
		nc.Close()
		store.Close()
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			log.Error("dev archiver stopped", "err", err)
		}
	}()
	log.Info("dev archiver on SQLite", "path", path)
	return func() {
		cancel()
		<-done
		nc.Close()
		store.Close()
	}
}
