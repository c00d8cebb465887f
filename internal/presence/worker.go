// Package presence keeps who is online and in which room across every edge:
// edges publish what changes on their side (the wire format is in
// jetstream/presence.go, beside the bucket), presence workers fold
// those events into one view (view.go) and keep it in the JetStream KV bucket
// PARLEY_PRESENCE (worker.go), announce joins and leaves once per user, and
// answer presence queries. docs/presence.md describes subjects, payloads and
// the failure handling.
package presence

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/metrics"
	"github.com/parley-mesh/parley/internal/tracing"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// Config is everything a presence worker is told. Zero values take the
// defaults of DefaultConfig.
type Config struct {
	// ID names this replica (the writer lease holds it); default random.
	ID string
	// Listen is the HTTP address of /metrics, /healthz, /readyz; empty
	// serves nothing (the dev mesh mounts nothing for the in-process worker).
	Listen string
	// Bucket configures the KV bucket provisioned at start.
	Bucket pjs.PresenceOptions
	// EdgeTimeout: the users of an edge silent for this long are removed.
	EdgeTimeout time.Duration
	// LeaseInterval is how often the writer renews its lease and the others
	// look at it; LeaseTTL is how long a lease may go unrenewed before
	// another replica takes it over.
	LeaseInterval time.Duration
	LeaseTTL      time.Duration
	// SyncBackoff is the least time between two snapshot requests to one edge.
	SyncBackoff time.Duration
	// MaxInflight bounds KV writes awaiting their ack.
	MaxInflight int
	// WriteTimeout bounds one KV write.
	WriteTimeout time.Duration
	// MaxPending bounds the edge messages buffered before the worker drops
	// (and later repairs, by snapshot, what it dropped).
	MaxPending int
	// TracerProvider, when set, continues the trace of a query that
	// carries one (an edge's, docs/tracing.md); nil: no spans.
	TracerProvider trace.TracerProvider

	Logger *slog.Logger
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Listen:        "127.0.0.1:8081",
		Bucket:        pjs.DefaultPresenceOptions(),
		EdgeTimeout:   10 * time.Second,
		LeaseInterval: time.Second,
		LeaseTTL:      4 * time.Second,
		SyncBackoff:   2 * time.Second,
		MaxInflight:   1024,
		WriteTimeout:  5 * time.Second,
		MaxPending:    1 << 18,
	}
}

func (c *Config) fillDefaults() {
	d := DefaultConfig()
	config.Default(&c.EdgeTimeout, d.EdgeTimeout)
	config.Default(&c.LeaseInterval, d.LeaseInterval)
	config.Default(&c.LeaseTTL, d.LeaseTTL)
	config.Default(&c.SyncBackoff, d.SyncBackoff)
	config.Default(&c.WriteTimeout, d.WriteTimeout)
	if c.LeaseTTL < 2*c.LeaseInterval {
		c.LeaseTTL = 2 * c.LeaseInterval
	}
	config.Default(&c.MaxInflight, d.MaxInflight)
	config.Default(&c.MaxPending, d.MaxPending)
	if c.Bucket == (pjs.PresenceOptions{}) {
		c.Bucket = d.Bucket
	}
	if c.ID == "" {
		c.ID = "presence-" + rand.Text()[:12]
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// maxSnapshotEntries bounds one edge's snapshot (a million connections and
// room memberships); a larger one is dropped and logged.
const maxSnapshotEntries = 1 << 20

// maxTombs bounds the remembered revisions of purged keys; past it they are
// forgotten and a re-created key costs one lookup (see resolve).
const maxTombs = 1 << 17

// Worker is one presence replica. Every replica folds every edge message
// into its view and answers queries; the one holding the writer lease also
// mirrors the view into the KV bucket and announces joins and leaves.
type Worker struct {
	cfg      Config
	log      *slog.Logger
	nc       *nats.Conn
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	stream   jetstream.Stream
	registry *prometheus.Registry
	metrics  *metrics.Presence
	kvPrefix string       // $KV.<bucket>.
	tracer   trace.Tracer // nil: tracing is off

	msgs    chan *pjs.PresenceEdgeMsg
	queries chan *nats.Msg
	acks    chan ack
	role    chan bool

	ready    atomic.Bool
	isWriter atomic.Bool
	runOnce  atomic.Bool

	// Owned by the run loop.
	view     *view
	loading  bool
	writer   bool
	queue    []*entry
	inflight int
	tombs    map[string]uint64
	retry    []*entry
}

type ack struct {
	e    *entry
	del  bool
	hash uint64
	seq  uint64
	err  error
}

// New builds a worker on an established NATS connection.
func New(cfg Config, nc *nats.Conn) (*Worker, error) {
	cfg.fillDefaults()
	if !protocol.ValidName(cfg.ID) {
		return nil, fmt.Errorf("worker id %q is not 1-%d characters of [A-Za-z0-9_-]", cfg.ID, protocol.MaxNameLen)
	}
	w := &Worker{
		cfg:      cfg,
		log:      cfg.Logger.With("replica", cfg.ID),
		nc:       nc,
		registry: metrics.NewRegistry(),
		kvPrefix: "$KV." + pjs.PresenceBucket + ".",
		msgs:     make(chan *pjs.PresenceEdgeMsg, 4096),
		queries:  make(chan *nats.Msg, 1024),
		acks:     make(chan ack, cfg.MaxInflight),
		role:     make(chan bool, 1),
		tombs:    make(map[string]uint64),
	}
	w.tracer = tracing.Tracer(cfg.TracerProvider, "github.com/parley-mesh/parley/internal/presence")
	w.metrics = metrics.NewPresence(w.registry)
	metrics.RegisterConnected(w.registry, prometheus.GaugeOpts{
		Name: "parley_presence_nats_connected", Help: "1 when the worker is connected to NATS.",
	}, nc.IsConnected)
	w.view = newView(w.changed)
	return w, nil
}

// Registry is the worker's Prometheus registry.
func (w *Worker) Registry() *prometheus.Registry { return w.registry }

// ID is the replica's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Ready reports whether the worker has loaded the bucket and serves queries.
func (w *Worker) Ready() bool { return w.ready.Load() && w.nc.IsConnected() }

// Writer reports whether this replica holds the writer lease.
func (w *Worker) Writer() bool { return w.isWriter.Load() }

// Handler serves /metrics, /healthz and /readyz.
func (w *Worker) Handler() http.Handler {
	return metrics.Endpoints(w.registry, metrics.Requirement{Unmet: "not ready", Met: w.Ready})
}

// Run serves until ctx ends. On the way out it hands the writer lease over
// (so another replica takes over at once) and waits briefly for KV writes
// in flight.
func (w *Worker) Run(ctx context.Context) error {
	if !w.runOnce.CompareAndSwap(false, true) {
		return errors.New("presence worker already ran")
	}
	js, err := jetstream.New(w.nc,
		jetstream.WithPublishAsyncMaxPending(2*w.cfg.MaxInflight),
		jetstream.WithPublishAsyncTimeout(w.cfg.WriteTimeout))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	w.js = js
	if w.kv, err = pjs.ProvisionPresence(ctx, js, w.cfg.Bucket); err != nil {
		return fmt.Errorf("provision presence bucket: %w", err)
	}
	if w.stream, err = js.Stream(ctx, "KV_"+pjs.PresenceBucket); err != nil {
		return fmt.Errorf("presence bucket stream: %w", err)
	}

	// Subscribe before loading the bucket: events published meanwhile wait
	// in the subscription and are applied on top of what was loaded, which
	// is safe because they carry absolute counts.
	events, err := w.nc.Subscribe(pjs.PresenceEdgeWildcard, func(m *nats.Msg) {
		var em pjs.PresenceEdgeMsg
		if err := json.Unmarshal(m.Data, &em); err != nil || em.Validate() != nil ||
			m.Subject != pjs.PresenceEdgeSubject(em.Edge, em.Kind) {
			w.metrics.Invalid.Inc()
			return
		}
		select {
		case w.msgs <- &em:
		case <-ctx.Done():
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", pjs.PresenceEdgeWildcard, err)
	}
	defer events.Unsubscribe()
	// A subscription that falls this far behind drops; the edges' sequence
	// numbers reveal the gap and a snapshot repairs it.
	if err := events.SetPendingLimits(w.cfg.MaxPending, 256<<20); err != nil {
		return fmt.Errorf("pending limits: %w", err)
	}
	if err := w.load(ctx, false); err != nil {
		return err
	}
	queries, err := w.nc.QueueSubscribe(pjs.PresenceQuerySubject, pjs.PresenceQueryQueue, func(m *nats.Msg) {
		select {
		case w.queries <- m:
		default:
			w.metrics.Queries.WithLabelValues("busy").Inc()
			w.respond(context.Background(), m, pjs.PresenceQueryReply{Error: &protocol.Error{Code: protocol.CodeUnavailable, Message: "presence worker busy"}})
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", pjs.PresenceQuerySubject, err)
	}
	defer queries.Unsubscribe()
	if err := w.nc.Flush(); err != nil {
		return fmt.Errorf("flush subscriptions: %w", err)
	}

	var srv *http.Server
	if w.cfg.Listen != "" {
		ln, err := net.Listen("tcp", w.cfg.Listen)
		if err != nil {
			return fmt.Errorf("listen %s: %w", w.cfg.Listen, err)
		}
		srv = &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				w.log.Error("http server", "err", err)
			}
		}()
		w.log.Info("presence listening", "addr", ln.Addr().String())
	}

	leaseCtx, stopLease := context.WithCancel(ctx)
	var leaseDone sync.WaitGroup
	leaseDone.Add(1)
	go func() { defer leaseDone.Done(); w.lease(leaseCtx) }()

	w.ready.Store(true)
	w.log.Info("presence worker ready", "entries", w.view.present, "edges", len(w.view.edges))
	w.loop(ctx)
	w.ready.Store(false)

	stopLease()
	leaseDone.Wait()
	w.settle()
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
	return nil
}

func (w *Worker) loop(ctx context.Context) {
	// The tick also retries failed writes, so it is never slow.
	tick := time.NewTicker(min(max(w.cfg.EdgeTimeout/4, 20*time.Millisecond), 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-w.msgs:
			w.handle(m, time.Now())
		case q := <-w.queries:
			w.answer(q)
		case a := <-w.acks:
			w.acked(ctx, a)
		case r := <-w.role:
			w.setRole(ctx, r)
		case now := <-tick.C:
			w.sweep(now)
		}
		w.pump()
		w.metrics.Present.Set(float64(w.view.present))
	}
}

// settle waits (bounded) for KV writes in flight so their acks are not lost
// with the process; nothing new is written.
func (w *Worker) settle() {
	deadline := time.After(w.cfg.WriteTimeout)
	for w.inflight > 0 {
		select {
		case a := <-w.acks:
			w.inflight--
			a.e.inflight = false
		case <-deadline:
			return
		}
	}
}

// handle folds one edge message into the view.
func (w *Worker) handle(m *pjs.PresenceEdgeMsg, now time.Time) {
	w.metrics.Events.WithLabelValues(m.Kind).Inc()
	v := w.view
	if m.Kind == pjs.PresenceKindBye {
		w.log.Info("edge said bye", "edge", m.Edge)
		v.dropEdge(m.Edge)
		w.metrics.Edges.Set(float64(len(v.edges)))
		return
	}
	es := v.edge(m.Edge, now)
	es.lastSeen = now
	w.metrics.Edges.Set(float64(len(v.edges)))
	switch m.Kind {
	case pjs.PresenceKindHello:
		// A new incarnation (same id after a restart): what the old one had
		// is gone with it.
		v.clearEdge(es, nil)
		es.seq, es.seqKnown = m.Seq, true
	case pjs.PresenceKindConnect, pjs.PresenceKindDisconnect, pjs.PresenceKindJoin, pjs.PresenceKindLeave:
		if es.seqKnown && m.Seq != es.seq+1 {
			w.askSync(es, "gap", now)
		}
		es.seq, es.seqKnown = m.Seq, true
		v.set(es, m.Room, m.User, m.Conns, m.Since)
	case pjs.PresenceKindHeartbeat:
		if es.snapNext >= 0 {
			return // a snapshot is on its way
		}
		digest, err := pjs.ParsePresenceDigest(m.Digest)
		switch {
		case es.seqKnown && m.Seq != es.seq:
			w.askSync(es, "gap", now)
		case err != nil || digest != es.digest || m.Entries != es.entries:
			w.askSync(es, "digest", now)
		}
		es.seq, es.seqKnown = m.Seq, true
	case pjs.PresenceKindSnapshot:
		if m.Part == 0 {
			es.snap, es.snapNext = es.snap[:0], 0
		}
		if m.Part != es.snapNext || len(es.snap)+len(m.Items) > maxSnapshotEntries {
			es.snap, es.snapNext = nil, -1
			w.askSync(es, "snapshot", now)
			return
		}
		es.snap = append(es.snap, m.Items...)
		es.snapNext++
		if m.Final {
			v.applySnapshot(es, es.snap)
			es.seq, es.seqKnown = m.Seq, true
			es.snap, es.snapNext, es.asked = nil, -1, time.Time{}
			w.log.Debug("applied snapshot", "edge", es.id, "entries", es.entries)
		}
	}
}

// askSync asks an edge for a snapshot, at most once per SyncBackoff.
func (w *Worker) askSync(es *edgeState, reason string, now time.Time) {
	if now.Sub(es.asked) < w.cfg.SyncBackoff {
		return
	}
	es.asked = now
	w.metrics.SyncRequests.WithLabelValues(reason).Inc()
	w.log.Debug("asking edge for a snapshot", "edge", es.id, "reason", reason)
	if err := w.nc.Publish(pjs.PresenceSyncSubject(es.id), []byte(`{"reason":"`+reason+`"}`)); err != nil {
		w.log.Warn("sync request", "edge", es.id, "err", err)
	}
}

// sweep removes edges that stopped heartbeating and retries failed writes.
func (w *Worker) sweep(now time.Time) {
	for id, es := range w.view.edges {
		if now.Sub(es.lastSeen) > w.cfg.EdgeTimeout {
			w.log.Warn("edge silent: removing its users", "edge", id, "entries", es.entries, "silent", now.Sub(es.lastSeen).Round(time.Millisecond))
			w.metrics.EdgesExpired.Inc()
			w.view.dropEdge(id)
		}
	}
	w.metrics.Edges.Set(float64(len(w.view.edges)))
	retry := w.retry
	w.retry = nil
	for _, e := range retry {
		w.enqueue(e)
	}
}

// changed is the view's callback after an entry changed.
func (w *Worker) changed(e *entry) {
	if w.loading {
		return
	}
	if !w.writer {
		if e.total == 0 {
			w.view.remove(e)
		}
		return
	}
	w.enqueue(e)
}

func (w *Worker) enqueue(e *entry) {
	if e.queued || !w.writer {
		return
	}
	e.queued = true
	w.queue = append(w.queue, e)
}

// pump issues queued writes while the in-flight bound allows. One write per
// key is in flight at a time, so each can name the revision it replaces
// (compare-and-set) and bursts on one key collapse into one write.
func (w *Worker) pump() {
	for w.writer && len(w.queue) > 0 && w.inflight < w.cfg.MaxInflight {
		e := w.queue[0]
		w.queue[0] = nil
		w.queue = w.queue[1:]
		e.queued = false
		if e.inflight {
			e.again = true
			continue
		}
		w.write(e)
	}
	if len(w.queue) == 0 {
		w.queue = nil // let a burst's backing array go
	}
	w.metrics.Queued.Set(float64(len(w.queue)))
	w.metrics.Inflight.Set(float64(w.inflight))
}

// write makes the bucket agree with e: a put of its record, or a purge when
// nobody is left, each conditional on the revision the bucket should hold.
func (w *Worker) write(e *entry) {
	key := pjs.PresenceKey(e.room, e.user)
	msg := nats.NewMsg(w.kvPrefix + key)
	var hash uint64
	del := e.total == 0
	if del {
		if !e.inKV {
			w.view.remove(e)
			return
		}
		msg.Header.Set("KV-Operation", "PURGE")
		msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		msg.Header.Set(jetstream.MsgTTLHeader, pjs.PresenceMarkerTTL.String())
	} else {
		b, err := json.Marshal(e.record())
		if err != nil {
			w.log.Error("encode record", "key", key, "err", err)
			return
		}
		hash = hashBytes(b)
		if e.inKV && hash == e.written {
			return
		}
		msg.Data = b
	}
	rev := e.rev
	if !e.inKV && rev == 0 {
		rev = w.tombs[key]
		delete(w.tombs, key)
	}
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	f, err := w.js.PublishMsgAsync(msg)
	if err != nil {
		w.metrics.KVWrites.WithLabelValues(opName(del), "error").Inc()
		w.log.Warn("kv write", "key", key, "err", err)
		w.retry = append(w.retry, e)
		return
	}
	e.inflight = true
	w.inflight++
	go func() {
		a := ack{e: e, del: del, hash: hash}
		select {
		case pa := <-f.Ok():
			a.seq = pa.Sequence
		case a.err = <-f.Err():
		}
		w.acks <- a // capacity MaxInflight ≥ writes in flight: never blocks
	}()
}

// acked records a write's outcome and announces the transitions it made.
func (w *Worker) acked(ctx context.Context, a ack) {
	e := a.e
	e.inflight = false
	w.inflight--
	op := opName(a.del)
	if !w.writer {
		// Lost the lease meanwhile: the next writer reconciles from the
		// bucket; announcing now could double what it announces. The
		// write itself happened (or not) all the same: count it.
		result := "ok"
		switch {
		case a.err != nil && isConflict(a.err):
			result = "conflict"
		case a.err != nil:
			result = "error"
		}
		w.metrics.KVWrites.WithLabelValues(op, result).Inc()
		if e.total == 0 {
			w.view.remove(e)
		}
		return
	}
	if a.err != nil {
		if isConflict(a.err) {
			w.metrics.KVWrites.WithLabelValues(op, "conflict").Inc()
			w.resolve(ctx, e)
			w.enqueue(e)
			return
		}
		w.metrics.KVWrites.WithLabelValues(op, "error").Inc()
		w.log.Warn("kv write failed; will retry", "key", pjs.PresenceKey(e.room, e.user), "err", a.err)
		w.retry = append(w.retry, e)
		return
	}
	w.metrics.KVWrites.WithLabelValues(op, "ok").Inc()
	was := e.inKV
	e.rev = a.seq
	if a.del {
		e.inKV, e.written = false, 0
		if was {
			w.announce(e, false)
		}
	} else {
		e.inKV, e.written = true, a.hash
		if !was {
			w.announce(e, true)
		}
	}
	switch {
	case e.again:
		e.again = false
		w.enqueue(e)
	case e.total == 0 && !e.inKV:
		if len(w.tombs) >= maxTombs {
			clear(w.tombs)
		}
		w.tombs[pjs.PresenceKey(e.room, e.user)] = e.rev
		w.view.remove(e)
	}
}

// resolve re-reads what the bucket holds for e after a compare-and-set
// failed: a marker we did not know about, or a write by a replica that
// still thought it was the writer. The view is the truth; the next write
// replaces whatever is there.
func (w *Worker) resolve(ctx context.Context, e *entry) {
	key := pjs.PresenceKey(e.room, e.user)
	rctx, cancel := context.WithTimeout(ctx, w.cfg.WriteTimeout)
	defer cancel()
	m, err := w.stream.GetLastMsgForSubject(rctx, w.kvPrefix+key)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		e.rev, e.inKV, e.written = 0, false, 0
	case err != nil:
		w.log.Warn("resolve kv conflict", "key", key, "err", err)
	default:
		e.rev = m.Sequence
		switch m.Header.Get("KV-Operation") {
		case "DEL", "PURGE":
			e.inKV, e.written = false, 0
		default:
			e.inKV, e.written = true, hashBytes(m.Data)
		}
	}
}

func opName(del bool) string {
	if del {
		return "purge"
	}
	return "put"
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}

// announce publishes a join/leave (rooms) or online/offline (users). It is
// at most once: a writer that dies between the bucket write and this
// publish leaves the transition unannounced, never doubled.
func (w *Worker) announce(e *entry, present bool) {
	var a pjs.PresenceAnnouncement
	var subject string
	switch {
	case e.room != "" && present:
		a, subject = pjs.PresenceAnnouncement{Op: pjs.PresenceOpJoin, Room: e.room, User: e.user}, pjs.PresenceRoomSubject(e.room)
	case e.room != "":
		a, subject = pjs.PresenceAnnouncement{Op: pjs.PresenceOpLeave, Room: e.room, User: e.user}, pjs.PresenceRoomSubject(e.room)
	case present:
		a, subject = pjs.PresenceAnnouncement{Op: pjs.PresenceOpOnline, User: e.user}, pjs.PresenceUserSubject(e.user)
	default:
		a, subject = pjs.PresenceAnnouncement{Op: pjs.PresenceOpOffline, User: e.user}, pjs.PresenceUserSubject(e.user)
	}
	b, _ := json.Marshal(a)
	if err := w.nc.Publish(subject, b); err != nil {
		w.log.Warn("announce", "subject", subject, "err", err)
		return
	}
	w.metrics.Announcements.WithLabelValues(a.Op).Inc()
}

// setRole switches between follower and writer. A new writer reads what the
// bucket holds (revisions, values) and writes only where its view differs:
// nobody who stayed is touched, so a failover announces nothing spurious.
func (w *Worker) setRole(ctx context.Context, writer bool) {
	if writer == w.writer {
		return
	}
	w.writer = writer
	w.isWriter.Store(writer)
	if writer {
		w.metrics.Writer.Set(1)
		w.log.Info("became the presence writer")
		if err := w.load(ctx, true); err != nil {
			w.log.Error("load bucket as writer", "err", err)
		}
		for _, ru := range w.view.rooms {
			for _, e := range ru.users {
				w.enqueue(e) // write skips entries the bucket already agrees with
			}
		}
		return
	}
	w.metrics.Writer.Set(0)
	w.log.Warn("lost the presence writer lease")
	for _, e := range w.queue {
		e.queued = false
	}
	w.queue = nil
	for _, ru := range w.view.rooms {
		for _, e := range ru.users {
			if e.total == 0 && !e.inflight {
				w.view.remove(e)
			}
		}
	}
}

// load reads the whole bucket. At start (writer false) it builds the view
// from the records, each edge given EdgeTimeout from now to prove it is
// alive; as a new writer it learns the revision and value of every key.
func (w *Worker) load(ctx context.Context, writer bool) error {
	w.loading = true
	defer func() { w.loading = false }()
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	watch, err := w.kv.WatchAll(lctx)
	if err != nil {
		return fmt.Errorf("watch presence bucket: %w", err)
	}
	defer watch.Stop()
	if writer {
		for _, ru := range w.view.rooms {
			for _, e := range ru.users {
				e.rev, e.inKV, e.written = 0, false, 0
			}
		}
		clear(w.tombs)
	}
	now := time.Now()
	n := 0
	for {
		var kve jetstream.KeyValueEntry
		select {
		case kve = <-watch.Updates():
		case <-lctx.Done():
			return fmt.Errorf("load presence bucket: %w", lctx.Err())
		}
		if kve == nil {
			break // initial values done
		}
		key := kve.Key()
		if key == pjs.PresenceWriterKey {
			continue
		}
		if kve.Operation() != jetstream.KeyValuePut {
			if writer {
				w.tombs[key] = kve.Revision()
			}
			continue
		}
		var rec pjs.PresenceRecord
		if err := json.Unmarshal(kve.Value(), &rec); err != nil || rec.Validate() != nil || pjs.PresenceKey(rec.Room, rec.User) != key {
			w.log.Warn("ignoring invalid presence record", "key", key)
			continue
		}
		n++
		if !writer {
			for edge, ec := range rec.Edges {
				es := w.view.edge(edge, now)
				w.view.set(es, rec.Room, rec.User, ec.Conns, ec.Since)
			}
			continue
		}
		e := w.view.entry(rec.Room, rec.User)
		e.rev, e.inKV, e.written = kve.Revision(), true, hashBytes(kve.Value())
	}
	w.log.Info("loaded presence bucket", "records", n, "writer", writer)
	return nil
}

// answer serves one presence query from the view.
func (w *Worker) answer(m *nats.Msg) {
	ctx, span := w.startQuery(m)
	defer span.End()
	var q pjs.PresenceQuery
	if err := json.Unmarshal(m.Data, &q); err != nil || !protocol.ValidName(q.Room) {
		w.metrics.Queries.WithLabelValues("bad_request").Inc()
		span.SetStatus(codes.Error, string(protocol.CodeBadRequest))
		w.respond(ctx, m, pjs.PresenceQueryReply{Error: &protocol.Error{Code: protocol.CodeBadRequest, Message: "query needs a valid room"}})
		return
	}
	limit := q.Limit
	if limit <= 0 || limit > pjs.PresenceMaxQueryUsers {
		limit = pjs.PresenceMaxQueryUsers
	}
	users, total := w.view.users(q.Room, limit)
	w.metrics.Queries.WithLabelValues("ok").Inc()
	span.SetAttributes(tracing.AttrRoom.String(q.Room), tracing.AttrUsers.Int(len(users)))
	w.respond(ctx, m, pjs.PresenceQueryReply{Room: q.Room, Users: users, Total: total})
}

// startQuery begins the server span of a query that carries a trace (the
// edge's client span is its parent). The worker continues traces only: a
// query without one, or any query while tracing is off, gets the no-op span
// of a bare context.
func (w *Worker) startQuery(m *nats.Msg) (context.Context, trace.Span) {
	ctx := context.Background()
	if w.tracer == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	if ctx = tracing.FromHeader(ctx, m.Header); !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return w.tracer.Start(ctx, tracing.SpanPresenceQuery, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(tracing.SystemNATS, semconv.MessagingDestinationName(m.Subject)))
}

// respond answers a query; ctx carries its span, for the log line.
func (w *Worker) respond(ctx context.Context, m *nats.Msg, r pjs.PresenceQueryReply) {
	if m.Reply == "" {
		return
	}
	b, _ := json.Marshal(r)
	if err := m.Respond(b); err != nil {
		w.log.DebugContext(ctx, "respond to query", "err", err)
	}
}

// lease runs the writer election: the holder renews the "writer" key by
// compare-and-set every LeaseInterval; the others take it over, again by
// compare-and-set, once its revision has not moved for LeaseTTL by their own
// clock (no clock sync needed). Losing a compare-and-set means someone else
// holds it.
func (w *Worker) lease(ctx context.Context) {
	var held uint64 // our lease revision, 0 when not holding
	var renewed time.Time
	var seenRev uint64
	var seenAt time.Time
	id := []byte(w.cfg.ID)
	setRole := func(writer bool) {
		select {
		case w.role <- writer:
		case <-ctx.Done():
		}
	}
	try := func() {
		c, cancel := context.WithTimeout(ctx, w.cfg.LeaseTTL/2)
		defer cancel()
		now := time.Now()
		if held != 0 {
			rev, err := w.kv.Update(c, pjs.PresenceWriterKey, id, held)
			if err != nil && isConflict(err) {
				// A renewal that timed out here may still have landed:
				// if the key holds our id, the lease is still ours.
				if kve, gerr := w.kv.Get(c, pjs.PresenceWriterKey); gerr == nil && string(kve.Value()) == w.cfg.ID {
					rev, err = kve.Revision(), nil
				}
			}
			switch {
			case err == nil:
				held, renewed = rev, now
			case ctx.Err() != nil:
			case isConflict(err) || now.Sub(renewed) > w.cfg.LeaseTTL/2:
				w.log.Warn("writer lease lost", "err", err)
				held = 0
				setRole(false)
			}
			return
		}
		kve, err := w.kv.Get(c, pjs.PresenceWriterKey)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if rev, err := w.kv.Create(c, pjs.PresenceWriterKey, id); err == nil {
				held, renewed = rev, now
				setRole(true)
			}
		case err != nil:
		case kve.Revision() != seenRev:
			seenRev, seenAt = kve.Revision(), now
		case now.Sub(seenAt) >= w.cfg.LeaseTTL:
			if rev, err := w.kv.Update(c, pjs.PresenceWriterKey, id, seenRev); err == nil {
				w.log.Info("took over the writer lease", "from", string(kve.Value()))
				held, renewed = rev, now
				setRole(true)
			}
		}
	}
	t := time.NewTicker(w.cfg.LeaseInterval)
	defer t.Stop()
	for {
		try()
		select {
		case <-ctx.Done():
			if held != 0 {
				// Hand over now rather than after LeaseTTL.
				c, cancel := context.WithTimeout(context.Background(), time.Second)
				err := w.kv.Delete(c, pjs.PresenceWriterKey, jetstream.LastRevision(held))
				cancel()
				if err != nil {
					w.log.Warn("release writer lease", "err", err)
				}
			}
			return
		case <-t.C:
		}
	}
}

func hashBytes(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}
