// Command presence is Parley's presence worker: it folds the edges' presence
// events into the PARLEY_PRESENCE KV bucket, announces joins and leaves and
// answers presence queries. Run several replicas: one holds the writer lease,
// all answer queries. The dev mesh (`go run ./cmd/edge`) runs one in-process.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/presence"
)

func main() { config.Main("presence", run) }

type options struct {
	presence  presence.Config
	nats      config.NATS
	logLevel  string
	logFormat string
}

func parse(args []string, getenv func(string) string) (*options, error) {
	o := &options{presence: presence.DefaultConfig()}
	c := &o.presence
	fs := flag.NewFlagSet("presence", flag.ContinueOnError)
	fs.StringVar(&c.Listen, "listen", c.Listen, "HTTP address for /metrics, /healthz, /readyz")
	o.nats.Register(fs)
	fs.StringVar(&c.ID, "id", "", "replica id shown in the writer lease (default: presence-<random>)")
	fs.IntVar(&c.Bucket.Replicas, "kv-replicas", c.Bucket.Replicas, "presence KV bucket replicas (3 in production clusters)")
	fs.DurationVar(&c.EdgeTimeout, "edge-timeout", c.EdgeTimeout, "remove the users of an edge silent for this long")
	fs.DurationVar(&c.LeaseInterval, "lease-interval", c.LeaseInterval, "writer lease renewal period")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", c.LeaseTTL, "take the writer lease over when it went unrenewed this long")
	fs.DurationVar(&c.SyncBackoff, "sync-backoff", c.SyncBackoff, "least time between two snapshot requests to one edge")
	fs.IntVar(&c.MaxInflight, "max-inflight", c.MaxInflight, "KV writes awaiting their ack")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "wait this long for a KV write's ack")
	fs.IntVar(&c.MaxPending, "max-pending", c.MaxPending, "edge messages buffered before dropping (repaired by snapshot)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "json", "json or text")
	if err := config.Parse(fs, args, getenv); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.nats.URLs == "" {
		return nil, errors.New("--nats is required (the dev mesh runs presence inside `go run ./cmd/edge`)")
	}
	return o, nil
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	o, err := parse(args, getenv)
	if err != nil {
		return err
	}
	log, err := config.NewLogger(o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	o.presence.Logger = log
	o.nats.Name = "parley-presence"
	nc, err := o.nats.Connect(o.nats.URLs, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	w, err := presence.New(o.presence, nc)
	if err != nil {
		return err
	}
	return w.Run(ctx)
}
