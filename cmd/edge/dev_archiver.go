package main

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/internal/archive"
)

// startDevArchiver runs the archiver in-process on the dev mesh's embedded
// NATS server, with SQLite in the data directory (<data>/archive.db), so
// `go run ./cmd/edge` keeps history past the stream's retention. What the
// edge has not archived by the time it stops waits in the stream for the
// next start; without an archiver the edge answers from the stream alone.
func startDevArchiver(srv interface{ Shutdown() }, o *options, log *slog.Logger) (stop func()) {
	log = log.With("component", "archiver")
	path := filepath.Join(o.data, "archive.db")
	store, err := archive.OpenSQLite(context.Background(), path)
	if err != nil {
		log.Error("dev archiver: open store", "err", err)
		return func() {}
	}
	return startDevWorker(srv, o, log, "archiver", func(nc *nats.Conn) (devWorker, error) {
		cfg := archive.DefaultConfig()
		cfg.Logger = log
		cfg.TracerProvider = o.edge.TracerProvider
		a, err := archive.New(cfg, nc, store)
		if err != nil {
			return nil, err
		}
		log.Info("dev archiver on SQLite", "path", path)
		return a, nil
	}, func() { store.Close() })
}
