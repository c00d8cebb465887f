// Command archiver is Parley's archiver: a durable JetStream consumer that
// writes every chat message once into SQLite or PostgreSQL (acking only after
// commit) and answers history requests for what the stream no longer keeps.
// Run any number of replicas against one store. The dev mesh (`go run
// ./cmd/edge`) runs one in-process; this binary is for real deployments.
//
//	archiver [flags]            archive and serve history
//	archiver provision [flags]  create or update the archive consumer and exit
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/archive"
	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/gcpolicy"
	pjs "github.com/parley-mesh/parley/jetstream"
)

func main() {
	config.Main("archiver", func(ctx context.Context, args []string, getenv func(string) string) error {
		return run(ctx, args, getenv, nil)
	}, archive.ErrBadConfig)
}

type options struct {
	archive archive.Config
	store   archive.StoreConfig
	nats    config.NATS
	listen  string
	log     config.Log
	tracing config.Tracing
	mem     gcpolicy.Flags
}

const synopsis = `Usage:
  archiver --nats URL [flags]            archive every chat message (SQLite or PostgreSQL) and
                                         serve history for what the stream no longer keeps
  archiver provision --nats URL [flags]  create or update the archive consumer and exit

--nats is required: the dev mesh (go run ./cmd/edge) runs an archiver itself.
HTTP /metrics, /healthz and /readyz are served on --listen (default 127.0.0.1:8082).
Tracing (OTLP/HTTP) is off unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER=otlp
is set; OTEL_SERVICE_NAME defaults to parley-archiver (docs/tracing.md).
Exit status: 0 after SIGTERM/SIGINT, 2 for a bad command line or store configuration, 1 otherwise.`

func parse(args []string, getenv func(string) string) (*options, error) {
	o := &options{archive: archive.DefaultConfig(), nats: config.NATS{Name: "parley-archiver"}}
	fs := config.NewFlags("archiver", synopsis)
	c := &o.archive
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8082", "HTTP address for /metrics, /healthz, /readyz")
	o.nats.Register(fs.FlagSet)
	fs.StringVar(&o.store.Kind, "store", "sqlite", "sqlite or postgres")
	fs.StringVar(&o.store.SQLitePath, "sqlite-path", "./data/archive.db", "SQLite database file (--store sqlite), relative to the working directory; created with its directory")
	fs.StringVar(&o.store.PostgresDSN, "postgres-dsn", "", "PostgreSQL URL or key=value DSN (--store postgres), e.g. postgres://parley@db:5432/parley")
	fs.IntVar(&c.Batch, "batch", c.Batch, "most messages fetched and written in one transaction (1 to 10000, at most --max-ack-pending)")
	fs.DurationVar(&c.FetchWait, "fetch-wait", c.FetchWait, "how long an idle fetch waits for a message")
	fs.DurationVar(&c.Consumer.AckWait, "ack-wait", c.Consumer.AckWait, "unacked messages go to another replica after this long")
	fs.IntVar(&c.Consumer.MaxAckPending, "max-ack-pending", c.Consumer.MaxAckPending, "messages in flight across all replicas (>= batch x replicas)")
	fs.DurationVar(&c.RetryMax, "retry-max", c.RetryMax, "longest backoff while the store or NATS fails (at least 100ms, the first one)")
	fs.StringVar(&c.HistorySubject, "history-subject", c.HistorySubject, `NATS subject of the history service ("-": serve none)`)
	fs.IntVar(&c.HistoryMax, "history-max", c.HistoryMax, "most messages in one history reply")
	o.mem.Register(fs.FlagSet)
	o.log.Register(fs.FlagSet)
	if err := fs.Parse(args, getenv); err != nil {
		return nil, err
	}
	return o, config.First(
		o.nats.Require("the dev mesh, `go run ./cmd/edge`, runs an archiver itself"),
		config.HostPort("listen", o.listen),
		o.nats.Check(),
		o.checkStore(),
		config.InRange("batch", c.Batch, 1, 10_000),
		config.Positive("fetch-wait", c.FetchWait),
		config.Positive("ack-wait", c.Consumer.AckWait),
		config.Positive("max-ack-pending", c.Consumer.MaxAckPending),
		o.checkPairs(),
		checkHistorySubject(c.HistorySubject),
		config.Positive("history-max", c.HistoryMax),
		o.mem.Check(),
		o.log.SetLogger(&c.Logger),
		o.tracing.Read(getenv),
	)
}

// checkStore checks --store and the flags of the store it names, as
// archive.Open will read them, naming the flag.
func (o *options) checkStore() error {
	switch o.store.Kind {
	case "sqlite":
		switch {
		case o.store.SQLitePath == "":
			return config.Usagef("--sqlite-path must name a file (--store sqlite)")
		case strings.ContainsAny(o.store.SQLitePath, "?#"):
			return config.Usagef("--sqlite-path %q must not contain '?' or '#'", o.store.SQLitePath)
		}
	case "postgres":
		if o.store.PostgresDSN == "" {
			return config.Usagef("--store postgres needs --postgres-dsn")
		}
		// Parsing reads nothing from the network; the error text hides
		// the password.
		if _, err := pgxpool.ParseConfig(o.store.PostgresDSN); err != nil {
			return config.Usagef("--postgres-dsn: %w", err)
		}
	default:
		return config.Usagef("--store must be sqlite or postgres, not %q", o.store.Kind)
	}
	return nil
}

// checkPairs checks the flags that bound each other; archive.New would
// otherwise refuse the first or raise the second without a word.
func (o *options) checkPairs() error {
	c := &o.archive
	switch {
	case c.Batch > c.Consumer.MaxAckPending:
		return config.Usagef("--batch %d exceeds --max-ack-pending %d", c.Batch, c.Consumer.MaxAckPending)
	case c.RetryMax < c.RetryMin:
		return config.Usagef("--retry-max must be at least %v (the first retry's wait), not %v", c.RetryMin, c.RetryMax)
	}
	return nil
}

func checkHistorySubject(s string) error {
	if s != "-" && !validSubject(s) {
		return config.Usagef("--history-subject %q is not a plain NATS subject (or - for none)", s)
	}
	return nil
}

// validSubject accepts dot-separated tokens of printable ASCII, no wildcards.
func validSubject(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c > '~' || c == '*' || c == '>' || (c == '.' && s[i-1] == '.') {
			return false
		}
	}
	return true
}

// run parses, connects, provisions the consumer and archives until ctx
// ends. listening, when set (tests), is told the bound HTTP address.
func run(ctx context.Context, args []string, getenv func(string) string, listening func(addr string)) error {
	provisionOnly, args := config.Subcommand(args, "provision")
	o, err := parse(args, getenv)
	if err != nil {
		return err
	}
	log := o.archive.Logger
	if provisionOnly {
		return o.nats.Provision(ctx, log, func(ctx context.Context, js jetstream.JetStream) error {
			_, err := pjs.ProvisionArchive(ctx, js, o.archive.Consumer)
			return err
		}, "stream", pjs.ChatStream, "consumer", pjs.ArchiveConsumer)
	}
	if _, _, err := gcpolicy.Apply(o.mem, getenv, log); err != nil {
		return err
	}
	tp, stopTracing, err := o.tracing.Start(ctx, log, "parley-archiver", "")
	if err != nil {
		return err
	}
	defer stopTracing() // after the archiver and its connection: its last spans go too
	o.archive.TracerProvider = tp
	nc, err := o.nats.Connect(o.nats.URLs, log)
	if err != nil {
		return err
	}
	defer nc.Close()

	store, err := archive.Open(ctx, o.store)
	if err != nil {
		return err
	}
	defer store.Close()
	a, err := archive.New(o.archive, nc, store)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.listen, err)
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("archiver listening", "addr", ln.Addr().String(), "store", o.store.Kind)
	if listening != nil {
		listening(ln.Addr().String())
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	select {
	case err = <-done:
	case err = <-serveErr:
		cancel()
		err = errors.Join(fmt.Errorf("http server: %w", err), <-done)
	}
	// Acks are fire-and-forget publishes: flush them before leaving.
	if derr := nc.Drain(); derr != nil {
		log.Warn("drain nats", "err", derr)
	}
	return err
}
