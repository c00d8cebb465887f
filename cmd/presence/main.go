// Command presence is Parley's presence worker: it folds the edges' presence
// events into the PARLEY_PRESENCE KV bucket, announces joins and leaves and
// answers presence queries. Run several replicas: one holds the writer lease,
// all answer queries. The dev mesh (`go run ./cmd/edge`) runs one in-process.
package main

import (
	"context"

	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/gcpolicy"
	"github.com/parley-mesh/parley/internal/presence"
	"github.com/parley-mesh/parley/protocol"
)

func main() { config.Main("presence", run) }

type options struct {
	presence presence.Config
	nats     config.NATS
	log      config.Log
	tracing  config.Tracing
	mem      gcpolicy.Flags
}

const synopsis = `Usage:
  presence --nats URL [flags]   fold the edges' presence events into the KV bucket PARLEY_PRESENCE,
                                announce joins and leaves, answer presence queries

--nats is required: the dev mesh (go run ./cmd/edge) runs a presence worker itself.
HTTP /metrics, /healthz and /readyz are served on --listen (default 127.0.0.1:8081).
Tracing (OTLP/HTTP) is off unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER=otlp
is set; OTEL_SERVICE_NAME defaults to parley-presence (docs/tracing.md).
Exit status: 0 after SIGTERM/SIGINT, 2 for a bad command line, 1 otherwise.`

func parse(args []string, getenv func(string) string) (*options, error) {
	o := &options{presence: presence.DefaultConfig(), nats: config.NATS{Name: "parley-presence"}}
	c := &o.presence
	fs := config.NewFlags("presence", synopsis)
	fs.StringVar(&c.Listen, "listen", c.Listen, "HTTP address for /metrics, /healthz, /readyz")
	o.nats.Register(fs.FlagSet)
	fs.StringVar(&c.ID, "id", "", "replica id shown in the writer lease, [A-Za-z0-9_-] (default: presence-<random>)")
	fs.IntVar(&c.Bucket.Replicas, "kv-replicas", c.Bucket.Replicas, "presence KV bucket replicas, 1 to 5 (3 in production clusters)")
	fs.DurationVar(&c.EdgeTimeout, "edge-timeout", c.EdgeTimeout, "remove the users of an edge silent for this long")
	fs.DurationVar(&c.LeaseInterval, "lease-interval", c.LeaseInterval, "writer lease renewal period")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", c.LeaseTTL, "take the writer lease over when it went unrenewed this long (at least twice --lease-interval)")
	fs.DurationVar(&c.SyncBackoff, "sync-backoff", c.SyncBackoff, "least time between two snapshot requests to one edge")
	fs.IntVar(&c.MaxInflight, "max-inflight", c.MaxInflight, "KV writes awaiting their ack")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "wait this long for a KV write's ack")
	fs.IntVar(&c.MaxPending, "max-pending", c.MaxPending, "edge messages buffered before dropping (repaired by snapshot)")
	o.mem.Register(fs.FlagSet)
	o.log.Register(fs.FlagSet)
	if err := fs.Parse(args, getenv); err != nil {
		return nil, err
	}
	if err := config.First(
		o.nats.Require("the dev mesh runs presence inside `go run ./cmd/edge`"),
		config.HostPort("listen", c.Listen),
		o.nats.Check(),
		checkID(c.ID),
		config.InRange("kv-replicas", c.Bucket.Replicas, 1, 5), // JetStream's bound
		config.Positive("edge-timeout", c.EdgeTimeout),
		config.Positive("lease-interval", c.LeaseInterval),
		config.Positive("lease-ttl", c.LeaseTTL),
		config.Positive("sync-backoff", c.SyncBackoff),
		config.Positive("max-inflight", c.MaxInflight),
		config.Positive("write-timeout", c.WriteTimeout),
		config.Positive("max-pending", c.MaxPending),
		o.mem.Check(),
		o.log.SetLogger(&c.Logger),
		o.tracing.Read(getenv),
	); err != nil {
		return nil, err
	}
	if c.LeaseTTL < 2*c.LeaseInterval {
		// The worker would raise it silently: a lease that may lapse
		// between two renewals changes hands while its holder is alive.
		return nil, config.Usagef("--lease-ttl %v must be at least twice --lease-interval %v", c.LeaseTTL, c.LeaseInterval)
	}
	return o, nil
}

func checkID(id string) error {
	if id != "" && !protocol.ValidName(id) {
		return config.Usagef("--id %q: use 1-%d characters of [A-Za-z0-9_-]", id, protocol.MaxNameLen)
	}
	return nil
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	o, err := parse(args, getenv)
	if err != nil {
		return err
	}
	if _, _, err := gcpolicy.Apply(o.mem, getenv, o.presence.Logger); err != nil {
		return err
	}
	tp, stopTracing, err := o.tracing.Start(ctx, o.presence.Logger, "parley-presence", o.presence.ID)
	if err != nil {
		return err
	}
	defer stopTracing() // after the worker and its connection: its last spans go too
	o.presence.TracerProvider = tp
	nc, err := o.nats.Connect(o.nats.URLs, o.presence.Logger)
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
