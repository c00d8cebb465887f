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
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/archive"
	"github.com/parley-mesh/parley/internal/config"
	pjs "github.com/parley-mesh/parley/jetstream"
)

func main() {
	config.Main("archiver", func(ctx context.Context, args []string, getenv func(string) string) error {
		return run(ctx, args, getenv, nil)
	}, archive.ErrBadConfig)
}

type options struct {
	archive   archive.Config
	store     archive.StoreConfig
	nats      config.NATS
	listen    string
	logLevel  string
	logFormat string
}

func parse(args []string, getenv func(string) string) (*options, error) {
	o := &options{archive: archive.DefaultConfig()}
	fs := flag.NewFlagSet("archiver", flag.ContinueOnError)
	c := &o.archive
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8082", "HTTP address for /metrics, /healthz, /readyz")
	o.nats.Register(fs)
	fs.StringVar(&o.store.Kind, "store", "sqlite", "sqlite or postgres")
	fs.StringVar(&o.store.SQLitePath, "sqlite-path", "./data/archive.db", "SQLite database file (--store sqlite)")
	fs.StringVar(&o.store.PostgresDSN, "postgres-dsn", "", "PostgreSQL URL or key=value DSN (--store postgres), e.g. postgres://parley@db:5432/parley")
	fs.IntVar(&c.Batch, "batch", c.Batch, "most messages fetched and written in one transaction")
	fs.DurationVar(&c.FetchWait, "fetch-wait", c.FetchWait, "how long an idle fetch waits for a message")
	fs.DurationVar(&c.Consumer.AckWait, "ack-wait", c.Consumer.AckWait, "unacked messages go to another replica after this long")
	fs.IntVar(&c.Consumer.MaxAckPending, "max-ack-pending", c.Consumer.MaxAckPending, "messages in flight across all replicas (>= batch x replicas)")
	fs.DurationVar(&c.RetryMax, "retry-max", c.RetryMax, "longest backoff while the store or NATS fails")
	fs.StringVar(&c.HistorySubject, "history-subject", c.HistorySubject, `NATS subject of the history service ("-": serve none)`)
	fs.IntVar(&c.HistoryMax, "history-max", c.HistoryMax, "most messages in one history reply")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "json", "json or text")
	if err := config.Parse(fs, args, getenv); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", config.ErrUsage, fs.Arg(0))
	}
	if o.nats.URLs == "" {
		return nil, fmt.Errorf("%w: --nats is required (the dev mesh, `go run ./cmd/edge`, runs an archiver itself)", config.ErrUsage)
	}
	if c.Batch < 1 || c.Batch > 10_000 {
		return nil, fmt.Errorf("%w: --batch must be 1 to 10000, not %d", config.ErrUsage, c.Batch)
	}
	if c.Batch > c.Consumer.MaxAckPending {
		return nil, fmt.Errorf("%w: --batch %d exceeds --max-ack-pending %d", config.ErrUsage, c.Batch, c.Consumer.MaxAckPending)
	}
	if c.HistorySubject != "-" && !validSubject(c.HistorySubject) {
		return nil, fmt.Errorf("%w: --history-subject %q is not a plain NATS subject", config.ErrUsage, c.HistorySubject)
	}
	switch o.store.Kind {
	case "sqlite", "postgres":
	default:
		return nil, fmt.Errorf("%w: --store must be sqlite or postgres, not %q", config.ErrUsage, o.store.Kind)
	}
	if o.store.Kind == "postgres" && o.store.PostgresDSN == "" {
		return nil, fmt.Errorf("%w: --store postgres needs --postgres-dsn", config.ErrUsage)
	}
	return o, nil
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
	provisionOnly := len(args) > 0 && args[0] == "provision"
	if provisionOnly {
		args = args[1:]
	}
	o, err := parse(args, getenv)
	if err != nil {
		return err
	}
	log, err := newLogger(o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	o.archive.Logger = log
	o.nats.Name = "parley-archiver"
	nc, err := o.nats.Connect(o.nats.URLs, log)
	if err != nil {
		return err
	}
	defer nc.Close()

	if provisionOnly {
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		if _, err := pjs.ProvisionArchive(ctx, js, o.archive.Consumer); err != nil {
			return err
		}
		log.Info("provisioned", "stream", pjs.ChatStream, "consumer", pjs.ArchiveConsumer)
		return nil
	}

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

func newLogger(level, format string) (*slog.Logger, error) {
	log, err := config.NewLogger(level, format)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrUsage, err)
	}
	return log, nil
}
