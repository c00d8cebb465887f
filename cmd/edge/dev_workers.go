package main

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// devWorker is a worker the dev mesh runs in-process beside the edge: the
// presence worker, the archiver.
type devWorker interface {
	Run(ctx context.Context) error
}

// startDevWorker runs a worker of the dev mesh (component: presence,
// archiver) in-process on the embedded NATS server. It has its own NATS
// connection, parley-<component> (the edge drains its own at shutdown), and
// its own context: the returned stop is deferred to run after the edge
// drained, so what the edge says last (its leaves and bye, its last
// messages) still reaches the worker. build makes the worker on that
// connection. A worker is an extra in dev: a failure is logged and the
// edge runs without it. release (may be nil) frees what the caller opened
// for the worker, once the worker is gone or could not start.
func startDevWorker(srv interface{ Shutdown() }, o *options, log *slog.Logger, component string,
	build func(nc *nats.Conn) (devWorker, error), release func()) (stop func()) {
	what := "dev " + component
	if release == nil {
		release = func() {}
	}
	s, ok := srv.(*server.Server)
	if !ok {
		log.Error(what + " needs the embedded nats-server")
		release()
		return func() {}
	}
	cfg := o.nats
	cfg.Name = "parley-" + component
	nc, err := cfg.Connect("", log, nats.InProcessServer(s))
	if err != nil {
		log.Error(what+": connect", "err", err)
		release()
		return func() {}
	}
	w, err := build(nc)
	if err != nil {
		log.Error(what, "err", err)
		nc.Close()
		release()
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(ctx); err != nil {
			log.Error(what+" stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
		nc.Close()
		release()
	}
}
