package archive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/metrics"
	"github.com/parley-mesh/parley/internal/tracing"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// Config is everything an archiver is told. Zero values take the defaults.
type Config struct {
	// Batch is the most messages fetched and written in one transaction.
	Batch int
	// FetchWait is how long an idle archiver waits for the next message
	// before asking again (and refreshing its metrics).
	FetchWait time.Duration
	// Consumer configures the shared durable consumer provisioned at start.
	Consumer pjs.ArchiveOptions
	// RetryMin and RetryMax bound the backoff while the store (or NATS)
	// fails: nothing is acked meanwhile, messages wait in the stream.
	RetryMin, RetryMax time.Duration
	// InfoInterval is how often the consumer's lag is read for /metrics.
	InfoInterval time.Duration
	// HistorySubject is where the history service answers; "-" serves no
	// history.
	HistorySubject string
	// HistoryMax bounds the messages of one history reply.
	HistoryMax int
	// QueryTimeout bounds one history query on the store.
	QueryTimeout time.Duration
	// TracerProvider, when set, gives each stored message that carries a
	// trace an archive span (docs/tracing.md); nil: no spans.
	TracerProvider trace.TracerProvider
	Logger         *slog.Logger
}

// DefaultConfig returns the defaults documented in docs/archiver.md.
func DefaultConfig() Config {
	return Config{
		Batch:          100,
		FetchWait:      2 * time.Second,
		Consumer:       pjs.DefaultArchiveOptions(),
		RetryMin:       100 * time.Millisecond,
		RetryMax:       10 * time.Second,
		InfoInterval:   5 * time.Second,
		HistorySubject: pjs.ArchiveHistorySubject,
		HistoryMax:     1000,
		QueryTimeout:   5 * time.Second,
	}
}

func (c *Config) fillDefaults() {
	d := DefaultConfig()
	config.Default(&c.Batch, d.Batch)
	if c.Consumer.MaxBatch < c.Batch {
		c.Consumer.MaxBatch = c.Batch
	}
	config.Default(&c.FetchWait, d.FetchWait)
	config.Default(&c.RetryMin, d.RetryMin)
	config.Default(&c.RetryMax, d.RetryMax)
	config.Default(&c.InfoInterval, d.InfoInterval)
	config.Default(&c.QueryTimeout, d.QueryTimeout)
	if c.HistorySubject == "" {
		c.HistorySubject = d.HistorySubject
	}
	config.Default(&c.HistoryMax, d.HistoryMax)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// ErrBatchTooLarge: the batch does not fit the consumer's in-flight bound.
var ErrBatchTooLarge = errors.New("batch larger than the consumer's max ack pending")

// Archiver copies every message of the chat stream into a Store, once: it
// fetches a batch from the shared durable consumer, writes it in one
// transaction and acks only after the commit. A crash anywhere before the
// ack means redelivery, which the store absorbs (idempotent on seq).
type Archiver struct {
	cfg      Config
	log      *slog.Logger
	nc       *nats.Conn
	store    Store
	registry *prometheus.Registry
	metrics  *Metrics
	tracer   trace.Tracer // nil: tracing is off (trace.go)

	ready   atomic.Bool
	storeOK atomic.Bool

	// afterCommit, when set (tests), runs between commit and ack; an error
	// ends Run there, as a crash would.
	afterCommit func() error
}

// New builds an archiver on an established NATS connection and an open
// store. It touches neither until Run.
func New(cfg Config, nc *nats.Conn, store Store) (*Archiver, error) {
	cfg.fillDefaults()
	o := pjs.ArchiveConsumerConfig(cfg.Consumer)
	if cfg.Batch > o.MaxAckPending {
		return nil, fmt.Errorf("%w: batch %d, max ack pending %d", ErrBatchTooLarge, cfg.Batch, o.MaxAckPending)
	}
	a := &Archiver{cfg: cfg, log: cfg.Logger, nc: nc, store: store, registry: metrics.NewRegistry(),
		tracer: tracing.Tracer(cfg.TracerProvider, "github.com/parley-mesh/parley/internal/archive")}
	a.metrics = NewMetrics(a.registry)
	metrics.RegisterConnected(a.registry, prometheus.GaugeOpts{
		Name: "parley_archiver_nats_connected", Help: "1 when the archiver is connected to NATS.",
	}, nc.IsConnected)
	return a, nil
}

// Registry is the archiver's Prometheus registry.
func (a *Archiver) Registry() *prometheus.Registry { return a.registry }

// Ready reports whether the archiver is serving: consumer provisioned,
// history service up, NATS connected and the store answering.
func (a *Archiver) Ready() bool {
	return a.ready.Load() && a.storeOK.Load() && a.nc.IsConnected()
}

// Run provisions the consumer (waiting for the chat stream if it does not
// exist yet), serves history and archives until ctx ends. It returns nil on
// a clean stop and an error only for what retrying cannot fix.
func (a *Archiver) Run(ctx context.Context) error {
	js, err := jetstream.New(a.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	cons, err := a.provision(ctx, js)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := a.store.Ping(ctx); err == nil {
		a.setStoreUp(true)
	}
	if a.cfg.HistorySubject != "-" {
		svc, err := newHistoryService(a)
		if err != nil {
			return err
		}
		defer svc.Stop()
	}
	// The watcher stops with Run, whichever way Run ends.
	wctx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { a.watch(wctx, cons) })
	defer func() { stopWatch(); wg.Wait() }()
	a.ready.Store(true)
	defer a.ready.Store(false)
	a.log.Info("archiving", "consumer", pjs.ArchiveConsumer, "batch", a.cfg.Batch, "history", a.cfg.HistorySubject)

	backoff := a.newBackoff()
	for ctx.Err() == nil {
		msgs, err := a.fetch(ctx, cons)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			a.log.Warn("fetch failed", "err", err)
			backoff.wait(ctx)
			continue
		}
		backoff.reset()
		if len(msgs) == 0 {
			a.metrics.LagSeconds.Set(0)
			continue
		}
		if err := a.archive(ctx, msgs); err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
	}
	a.log.Info("archiver stopped")
	return nil
}

func (a *Archiver) provision(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	backoff := a.newBackoff()
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := pjs.ProvisionArchive(pctx, js, a.cfg.Consumer)
		cancel()
		if err == nil {
			return cons, nil
		}
		if errors.Is(err, pjs.ErrIncompatible) || ctx.Err() != nil {
			return nil, err
		}
		// Usually the chat stream does not exist yet: the edge (or `edge
		// provision`) owns its settings, so the archiver waits for it
		// rather than create it with settings of its own.
		if attempt%10 == 0 {
			a.log.Warn("waiting for the chat stream to provision the archive consumer", "stream", pjs.ChatStream, "err", err)
		}
		backoff.wait(ctx)
	}
}

// fetch waits up to FetchWait for one message, then takes whatever else is
// waiting, up to a batch, without waiting: a busy stream gives full batches,
// a quiet one is archived at once rather than after a batch fills up.
func (a *Archiver) fetch(ctx context.Context, cons jetstream.Consumer) ([]jetstream.Msg, error) {
	fctx, cancel := context.WithTimeout(ctx, a.cfg.FetchWait)
	defer cancel()
	b, err := cons.Fetch(1, jetstream.FetchContext(fctx))
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	if err := b.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	if len(msgs) == 0 || a.cfg.Batch == 1 {
		return msgs, nil
	}
	b, err = cons.FetchNoWait(a.cfg.Batch - 1)
	if err != nil {
		// What we hold is still worth archiving.
		return msgs, nil
	}
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// archive writes one fetched batch and acks it. The write is retried with
// backoff until it commits or ctx ends: while the store is down nothing is
// acked and nothing more is fetched, so messages wait in the stream (other
// replicas get them after AckWait). It returns an error only when the
// afterCommit hook simulates a crash.
func (a *Archiver) archive(ctx context.Context, msgs []jetstream.Msg) error {
	spans := a.startSpans(msgs)
	var b Batch
	acks := make([]jetstream.Msg, 0, len(msgs))
	for i, m := range msgs {
		r, p, err := fromMsg(m)
		if err != nil {
			// Not a stream message at all: nothing to archive or redeliver.
			a.log.ErrorContext(spans.ctx(i), "terminating undecodable delivery", "subject", m.Subject(), "err", err)
			_ = m.Term()
			spans.fail(i, "undecodable delivery terminated")
			continue
		}
		if p != nil {
			b.Poison = append(b.Poison, *p)
		} else {
			b.Records = append(b.Records, r)
		}
		acks = append(acks, m)
	}
	backoff := a.newBackoff()
	records, poisonBefore, inserted := len(b.Records), len(b.Poison), 0
	for {
		began := time.Now()
		n, err := a.store.Write(ctx, b)
		if err == nil {
			inserted += n
			a.metrics.WriteSeconds.Observe(time.Since(began).Seconds())
			break
		}
		if ctx.Err() != nil {
			// Stopping: hand the batch back now rather than after AckWait
			// (if the commit did happen, the redelivery is a no-op).
			for _, m := range acks {
				_ = m.Nak()
			}
			spans.end("handed back unstored: the archiver is stopping")
			return nil
		}
		if errors.Is(err, ErrRejected) {
			// The data, not the store: find the culprits, keep the rest.
			var isolated int
			if b, isolated, err = a.isolate(ctx, b); err == nil {
				inserted += isolated
				continue
			}
		}
		a.metrics.StoreErrors.Inc()
		a.setStoreUp(false)
		a.log.Warn("store write failed: not acking, will retry", "msgs", b.Len(), "first_seq", firstSeq(b), "retry_in", backoff.next, "err", err)
		backoff.wait(ctx)
	}
	a.setStoreUp(true)
	if a.afterCommit != nil {
		if err := a.afterCommit(); err != nil {
			spans.end("stopped between commit and ack")
			return err
		}
	}
	for _, m := range acks {
		// A lost ack means a redelivery, which the store absorbs.
		_ = m.Ack()
	}
	n := len(acks)
	a.metrics.Batches.Inc()
	a.metrics.BatchSize.Observe(float64(n))
	a.metrics.Archived.Add(float64(inserted))
	refused := len(b.Poison) - poisonBefore
	a.metrics.Duplicates.Add(float64(records - refused - inserted))
	if len(b.Poison) > 0 {
		a.metrics.Poison.Add(float64(len(b.Poison)))
		for _, p := range b.Poison {
			a.log.WarnContext(spans.seqCtx(p.Seq), "poison message recorded and skipped", "seq", p.Seq, "subject", p.Subject, "reason", p.Reason)
			spans.fail(spans.index(p.Seq), "poison: recorded, not archived: "+p.Reason)
		}
	}
	spans.end("")
	if md, err := acks[n-1].Metadata(); err == nil {
		a.metrics.LagSeconds.Set(max(time.Since(md.Timestamp).Seconds(), 0))
	}
	return nil
}

// isolate writes a refused batch's records one at a time. It returns the
// batch still to write: the poison entries, old and new (records the store
// took are written already), and how many records were inserted.
func (a *Archiver) isolate(ctx context.Context, b Batch) (Batch, int, error) {
	out := Batch{Poison: b.Poison}
	inserted := 0
	for _, r := range b.Records {
		n, err := a.store.Write(ctx, Batch{Records: []Record{r}})
		switch {
		case err == nil:
			inserted += n
		case errors.Is(err, ErrRejected):
			out.Poison = append(out.Poison, Poison{Seq: r.Seq, Subject: r.Subject, Reason: storable(err.Error()),
				Payload: r.Data, Headers: r.Headers, Time: r.Time})
		default:
			return b, 0, err
		}
	}
	return out, inserted, nil
}

func firstSeq(b Batch) uint64 {
	switch {
	case len(b.Records) > 0:
		return b.Records[0].Seq
	case len(b.Poison) > 0:
		return b.Poison[0].Seq
	}
	return 0
}

func (a *Archiver) setStoreUp(up bool) {
	a.storeOK.Store(up)
	if up {
		a.metrics.StoreUp.Set(1)
	} else {
		a.metrics.StoreUp.Set(0)
	}
}

// watch refreshes the lag gauges and, while idle, the store's health.
func (a *Archiver) watch(ctx context.Context, cons jetstream.Consumer) {
	t := time.NewTicker(a.cfg.InfoInterval)
	defer t.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, a.cfg.InfoInterval)
		if info, err := cons.Info(ictx); err == nil {
			a.metrics.Pending.Set(float64(info.NumPending))
			a.metrics.AckPending.Set(float64(info.NumAckPending))
		}
		if err := a.store.Ping(ictx); err != nil {
			a.setStoreUp(false)
		} else {
			a.setStoreUp(true)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// backoff is exponential with full jitter between RetryMin and RetryMax.
type backoff struct {
	min, max, next time.Duration
}

func (a *Archiver) newBackoff() *backoff {
	return &backoff{min: a.cfg.RetryMin, max: a.cfg.RetryMax, next: a.cfg.RetryMin}
}

func (b *backoff) reset() { b.next = b.min }

func (b *backoff) wait(ctx context.Context) {
	d := b.next/2 + rand.N(b.next/2+1)
	b.next = min(2*b.next, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
