// Package edge is Parley's WebSocket ⇄ NATS bridge: it authenticates clients,
// maps rooms to subjects, publishes into JetStream and fans stored messages
// out to local connections with one NATS subscription per topic.
//
// Files: edge.go (the Edge and its HTTP surface), conn.go (one connection's
// lifecycle), outbox.go (its bounded queue), hub.go and room.go (who is
// subscribed to what), feed.go (the NATS side of the hub), requests.go (the
// protocol ops), publish.go (the JetStream publish path).
package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/metrics"
	"github.com/parley-mesh/parley/internal/tracing"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// Config is everything an edge is told. Zero values take the defaults of
// DefaultConfig.
type Config struct {
	// Listen is the HTTP address serving /ws, /metrics, /healthz, /readyz.
	Listen string
	// ReusePort sets SO_REUSEPORT on the listener so several edge processes
	// on one host can share the port (the kernel spreads connections).
	ReusePort bool
	// Pprof serves net/http/pprof under /debug/pprof/ on the same listener.
	Pprof bool
	// UI, when set, is served at GET / and every path the edge's own routes
	// do not take: the chat page (internal/webui).
	UI http.Handler
	// TLS, when set, serves the listener over TLS (wss://, https://). Its
	// GetCertificate may change the certificate while the edge runs.
	TLS *tls.Config
	// Insecure accepts ?user=NAME without a token (dev mode only).
	Insecure bool
	// Auth holds the JWT keys; when empty only insecure mode can connect.
	Auth auth.Config
	// AllowedOrigins lists the browser origins allowed to connect
	// (scheme://host[:port]); "*" allows any. Empty: same host only.
	// Clients that send no Origin header (non-browsers) are always allowed.
	AllowedOrigins []string
	// Stream configures the chat stream the edge provisions at start.
	Stream pjs.StreamOptions
	// Presence configures the edge's presence events (presence.go).
	Presence PresenceConfig

	MaxConnections int // 0: unlimited

	// MaxConnsPerUser and MaxConnsPerIP bound the connections one user and
	// one client address (IPv6: one /64) may hold on this edge; 0: no
	// limit. Beyond them an upgrade is refused with 429 rate_limited.
	MaxConnsPerUser int
	MaxConnsPerIP   int
	// TrustedProxies are the proxies whose X-Forwarded-For names the client
	// address for MaxConnsPerIP (the right-most untrusted entry) and whose
	// X-Forwarded-Proto says whether the client used TLS. Empty: the TCP
	// peer is the client.
	TrustedProxies []netip.Prefix
	// AllowedHosts are Host names an insecure edge answers besides
	// localhost and IP addresses ("*": any). Without them, a page whose
	// domain an attacker re-pointed at 127.0.0.1 (DNS rebinding) gets 403.
	AllowedHosts []string
	// HTTPIdleTimeout closes a keep-alive HTTP connection idle this long;
	// HTTPReadTimeout bounds reading one HTTP request. Neither applies to a
	// WebSocket once upgraded (it has ReadTimeout and WriteTimeout).
	HTTPIdleTimeout time.Duration
	HTTPReadTimeout time.Duration

	MaxFrameBytes        int           // a larger client frame gets too_large and is discarded
	HardFrameLimit       int           // a larger client frame closes the connection (1009)
	MaxOutFrameBytes     int           // coalesced pushes per outgoing message
	MaxQueuedMsgs        int           // outbound queue bound (messages) before slow-consumer close
	MaxQueuedBytes       int           // outbound queue bound (bytes)
	MaxSubscriptions     int           // rooms per connection
	RequestRate          float64       // requests per second per connection
	RequestBurst         int           //
	PublishRate          float64       // publishes per second per connection
	PublishBurst         int           //
	MaxInflightPublishes int           // unacked publishes per connection
	MaxStrikes           int           // rejected requests in 10 s before a policy-violation close
	PingInterval         time.Duration // WebSocket ping period
	ReadTimeout          time.Duration // no frame or pong for this long ends the connection
	MessageTimeout       time.Duration // a client message must arrive whole this long after its first header
	// ResyncInterval is how often every topic is checked against the
	// stream for messages whose RePublish was lost (see resync.go); leader
	// changes and reconnects trigger a check at once.
	ResyncInterval time.Duration
	WriteTimeout   time.Duration // one write may take this long
	RequestTimeout time.Duration // NATS requests made for a client request
	PublishTimeout time.Duration // wait for a JetStream ack
	DrainTimeout   time.Duration // SIGTERM grace period
	MaxRecover     int           // messages one sub with since/last reads in one go with Direct Get (the most one last replays)
	// MaxReplays bounds the long resumes (more than MaxRecover messages, or
	// more than half the queue in bytes) replayed at once on this edge,
	// each through an ordered consumer; a sub beyond it waits for a slot
	// (at most twice RequestTimeout, then unavailable).
	MaxReplays      int
	MaxHistory      int // messages in one history reply
	MaxHistoryBytes int // bytes of messages in one history reply
	// RoomCache is how many of each room's latest messages the edge keeps
	// to serve resumes and "last" without reading the stream (0: none).
	RoomCache int
	// RoomCacheBytes and RoomCacheTotalBytes bound those messages in bytes,
	// per room and across the edge (oldest dropped first): the count alone
	// lets large messages in many rooms fill the heap. A message costs its
	// frame's capacity, 64 B and its 40-B slot in the room's array.
	RoomCacheBytes      int
	RoomCacheTotalBytes int
	// WriteDelay collects pushes for this long before a write (0: write at
	// once). Each write is a syscall; at high fan-out a few milliseconds of
	// delay put several messages in one write and raise throughput at the
	// cost of that much latency (Centrifugo calls it write_delay).
	WriteDelay time.Duration
	// ArchiveSubject is where the archivers' history service answers: the
	// edge asks it for what the stream no longer holds (history past
	// retention, resumes). Empty: no archive, answers from the stream alone.
	ArchiveSubject string
	// LivePendingMsgs bounds what the NATS client buffers per live topic
	// before dropping (gap repair then reads the drops from the stream).
	LivePendingMsgs int
	// TracerProvider, when set, traces publishes, live deliveries and
	// presence queries (docs/tracing.md). Nil: the edge starts no span, but
	// a client's valid traceparent still travels with its message, so the
	// services after the edge can continue the client's trace.
	TracerProvider trace.TracerProvider

	Logger *slog.Logger
}

// DefaultConfig returns the defaults documented in README.md.
func DefaultConfig() Config {
	return Config{
		Listen:               "127.0.0.1:8080",
		Stream:               pjs.DefaultStreamOptions(),
		MaxConnsPerUser:      100,
		HTTPIdleTimeout:      2 * time.Minute,
		HTTPReadTimeout:      30 * time.Second,
		MaxFrameBytes:        64 << 10,
		HardFrameLimit:       1 << 20,
		MaxOutFrameBytes:     64 << 10,
		MaxQueuedMsgs:        4096,
		MaxQueuedBytes:       4 << 20,
		MaxSubscriptions:     100,
		RequestRate:          100,
		RequestBurst:         200,
		PublishRate:          50,
		PublishBurst:         100,
		MaxInflightPublishes: 256,
		MaxStrikes:           50,
		PingInterval:         25 * time.Second,
		ReadTimeout:          60 * time.Second,
		MessageTimeout:       10 * time.Second,
		ResyncInterval:       30 * time.Second,
		WriteTimeout:         10 * time.Second,
		RequestTimeout:       5 * time.Second,
		PublishTimeout:       5 * time.Second,
		DrainTimeout:         20 * time.Second,
		MaxRecover:           1000,
		MaxReplays:           64,
		MaxHistory:           500,
		MaxHistoryBytes:      1 << 20,
		RoomCache:            256,
		RoomCacheBytes:       defaultRoomCacheBytes,
		RoomCacheTotalBytes:  defaultRoomCacheTotalBytes,
		ArchiveSubject:       pjs.ArchiveHistorySubject,
		LivePendingMsgs:      1 << 16,
	}
}

func (c *Config) fillDefaults() {
	d := DefaultConfig()
	config.Default(&c.MaxFrameBytes, d.MaxFrameBytes)
	config.Default(&c.HardFrameLimit, d.HardFrameLimit)
	config.Default(&c.MaxOutFrameBytes, d.MaxOutFrameBytes)
	config.Default(&c.MaxQueuedMsgs, d.MaxQueuedMsgs)
	config.Default(&c.MaxQueuedBytes, d.MaxQueuedBytes)
	config.Default(&c.MaxSubscriptions, d.MaxSubscriptions)
	config.Default(&c.RequestBurst, d.RequestBurst)
	config.Default(&c.PublishBurst, d.PublishBurst)
	config.Default(&c.MaxInflightPublishes, d.MaxInflightPublishes)
	config.Default(&c.MaxStrikes, d.MaxStrikes)
	config.Default(&c.MaxRecover, d.MaxRecover)
	config.Default(&c.MaxReplays, d.MaxReplays)
	config.Default(&c.MaxHistory, d.MaxHistory)
	config.Default(&c.MaxHistoryBytes, d.MaxHistoryBytes)
	config.Default(&c.RoomCacheBytes, d.RoomCacheBytes)
	config.Default(&c.RoomCacheTotalBytes, d.RoomCacheTotalBytes)
	config.Default(&c.LivePendingMsgs, d.LivePendingMsgs)
	if c.MaxRecover > c.MaxQueuedMsgs/2 {
		// A replay lands in the outbound queue at once: leave room for live.
		c.MaxRecover = c.MaxQueuedMsgs / 2
	}
	config.Default(&c.RequestRate, d.RequestRate)
	config.Default(&c.PublishRate, d.PublishRate)
	config.Default(&c.PingInterval, d.PingInterval)
	config.Default(&c.ReadTimeout, d.ReadTimeout)
	config.Default(&c.MessageTimeout, d.MessageTimeout)
	config.Default(&c.ResyncInterval, d.ResyncInterval)
	config.Default(&c.WriteTimeout, d.WriteTimeout)
	config.Default(&c.RequestTimeout, d.RequestTimeout)
	config.Default(&c.PublishTimeout, d.PublishTimeout)
	config.Default(&c.DrainTimeout, d.DrainTimeout)
	config.Default(&c.HTTPIdleTimeout, d.HTTPIdleTimeout)
	config.Default(&c.HTTPReadTimeout, d.HTTPReadTimeout)
	if c.HardFrameLimit < c.MaxFrameBytes {
		c.HardFrameLimit = c.MaxFrameBytes
	}
	if c.Stream == (pjs.StreamOptions{}) {
		c.Stream = d.Stream
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Presence.fillDefaults()
}

// Edge is one edge node.
type Edge struct {
	cfg      Config
	log      *slog.Logger
	nc       *nats.Conn
	verifier *auth.Verifier
	registry *prometheus.Registry
	metrics  *metrics.Edge
	upgrader websocket.Upgrader
	// tracer starts the edge's spans; nil: tracing is off (trace.go).
	tracer trace.Tracer

	// backend is everything the edge asks of NATS (backend.go); natsb is
	// the same, for what only the NATS one has (its dispatchers, stop).
	backend Backend
	natsb   *natsBackend
	reader  *streamReader
	// replaySlots holds a token per long resume being replayed (MaxReplays).
	replaySlots chan struct{}
	// poller holds idle connections without a goroutine (nil: not Linux).
	poller *poller
	hub    *Hub
	pub    *publisher
	// resync catches topics up with the stream after lost RePublishes.
	resync *resyncer
	// presence publishes this edge's presence events and join/leave pushes.
	presence *presenceTracker

	listener net.Listener
	front    *front // the upgrade path of a plain-TCP listener (nil with TLS)
	server   *http.Server
	serveErr chan error

	// ctx is the edge's lifetime: every connection's context derives from
	// it, and so does the work the edge does for no connection (gap
	// repairs). Shutdown cancels it once it has closed every connection.
	ctx    context.Context
	cancel context.CancelFunc

	// requestHook, when set (by tests only, see export_test.go), runs
	// before each request is handled: it lets a test make handling panic.
	requestHook atomic.Pointer[func(op string)]

	nextConn atomic.Uint64
	// epoch is the chat stream's identity as the Centrifugo endpoint tells
	// it (centrifugo.go), read from the stream at most once a second.
	epoch    epochCache
	draining atomic.Bool
	started  atomic.Bool

	mu    sync.Mutex
	conns map[*Conn]struct{}
	// handlers counts connections between upgrade and full teardown, so a
	// drain can wait for them.
	handlers sync.WaitGroup
	// admit holds the per-user and per-address connection counts (limits.go).
	admit admission
}

// ErrNoAuth is returned by New when nothing could authenticate a client.
var ErrNoAuth = errors.New("no JWT key or secret configured and not in insecure mode")

// New builds an edge on an established NATS connection. It does not touch
// the network until Start.
func New(cfg Config, nc *nats.Conn) (*Edge, error) {
	cfg.fillDefaults()
	e := &Edge{
		cfg:      cfg,
		log:      cfg.Logger,
		nc:       nc,
		registry: metrics.NewRegistry(),
		conns:    make(map[*Conn]struct{}),
		serveErr: make(chan error, 1),
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.tracer = tracing.Tracer(cfg.TracerProvider, tracerName)
	if cfg.Auth.Enabled() {
		v, err := auth.NewVerifier(cfg.Auth)
		if err != nil {
			return nil, fmt.Errorf("jwt: %w", err)
		}
		e.verifier = v
	} else if !cfg.Insecure {
		return nil, ErrNoAuth
	}
	e.metrics = metrics.NewEdge(e.registry)
	metrics.RegisterConnected(e.registry, prometheus.GaugeOpts{
		Name: "parley_edge_nats_connected", Help: "1 when the edge is connected to NATS.",
	}, nc.IsConnected)
	e.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "parley_edge_parked_connections", Help: "Idle connections waiting in the poller, without a goroutine.",
	}, func() float64 {
		e.mu.Lock()
		defer e.mu.Unlock()
		n := 0
		for c := range e.conns {
			if c.parked.Load() {
				n++
			}
		}
		return float64(n)
	}))
	e.registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "parley_edge_nats_reconnects_total", Help: "NATS reconnections of the edge's connection.",
	}, func() float64 { return float64(nc.Stats().Reconnects) }))
	e.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		// Client frames are read by the edge itself (wsread.go), not by
		// gorilla: its read buffer is never used, keep it minimal.
		ReadBufferSize:  256,
		WriteBufferSize: 4096,
		// Idle connections hold no write buffer: it is taken per write.
		WriteBufferPool: &sync.Pool{},
		CheckOrigin:     e.checkOrigin,
	}
	return e, nil
}

// Registry is the edge's Prometheus registry (for tests and embedding).
func (e *Edge) Registry() *prometheus.Registry { return e.registry }

// Start provisions the stream, binds the listener and serves in the
// background.
func (e *Edge) Start(ctx context.Context) error {
	js, err := jetstream.New(e.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	stream, err := pjs.Provision(ctx, js, e.cfg.Stream)
	if err != nil {
		return fmt.Errorf("provision streams: %w", err)
	}
	e.replaySlots = make(chan struct{}, e.cfg.MaxReplays)
	e.pub = newPublisher(e.metrics, e.cfg.PublishTimeout, 65536)
	e.pub.tracer = e.tracer
	e.natsb = &natsBackend{
		nc: e.nc, js: js, stream: stream, name: pjs.ChatStream, timeout: e.cfg.RequestTimeout, log: e.log,
		tracer:         e.tracer,
		archiveSubject: e.cfg.ArchiveSubject,
		dropped:        e.metrics.DroppedLive.Inc,
		shards: newLiveShards(max(4, 2*runtime.GOMAXPROCS(0)), e.cfg.LivePendingMsgs, func(v any) {
			e.recovered("dispatch", v, e.log)
		}),
	}
	if err := e.natsb.startPublishing(e.pub.acked, func(v any) { e.recovered("ack", v, e.log) }); err != nil {
		return err
	}
	e.backend = e.natsb
	e.pub.backend = e.backend
	e.reader = &streamReader{b: e.backend}
	e.hub = NewHub(e.backend, e.log)
	e.hub.ctx = e.ctx
	if p, err := newPoller(); err == nil {
		e.poller = p
	} else {
		e.log.Info("idle connections keep a reader goroutine", "reason", err)
	}
	e.hub.recent = e.cfg.RoomCache
	evictions := e.metrics.RoomCacheEvictions
	e.hub.limitCache(e.cfg.RoomCacheBytes, e.cfg.RoomCacheTotalBytes, &e.metrics.RoomCacheBytes,
		evictions.WithLabelValues("room").Add, evictions.WithLabelValues("total").Add)
	e.hub.linger = roomLinger
	e.hub.observer = hubObserver{
		topicOpened: e.metrics.LiveSubjects.Inc,
		topicClosed: e.metrics.LiveSubjects.Dec,
		delivered:   func(n int) { e.metrics.Deliveries.Add(float64(n)) },
		gapRepaired: func(n int) {
			e.metrics.GapsRepaired.Inc()
			e.metrics.GapMessages.Add(float64(n))
		},
		gapUnrepaired: e.metrics.GapsUnrepaired.Inc,
		panicked:      func(v any) { e.recovered("repair", v, e.log) },
	}
	// After a reconnect nats.go has resubscribed every live subject; what
	// was stored while we were away is read from the stream. The same after
	// a leader change of the stream, and every ResyncInterval.
	e.resync = newResyncer(func(ctx context.Context) { e.hub.Resync(ctx, 8) }, e.cfg.ResyncInterval, 2*time.Second, e.log)
	go e.resync.run()
	if _, err := e.resync.watchLeader(e.nc); err != nil {
		return fmt.Errorf("subscribe to stream leader advisories: %w", err)
	}
	prev := e.nc.Opts.ReconnectedCB
	e.nc.SetReconnectHandler(func(nc *nats.Conn) {
		if prev != nil {
			prev(nc)
		}
		e.resync.event("nats reconnect")
	})
	e.presence = newPresenceTracker(e.nc, e.log, e.cfg.Presence)
	e.presence.shards = e.natsb.shards
	if err := e.presence.start(); err != nil {
		return err
	}

	ln, err := listen(ctx, e.cfg.Listen, e.cfg.ReusePort)
	if err != nil {
		return fmt.Errorf("listen %s: %w", e.cfg.Listen, err)
	}
	if e.cfg.TLS != nil {
		ln = tls.NewListener(ln, e.cfg.TLS)
	}
	e.admit.usersGauge, e.admit.addrsGauge = e.metrics.ConnectedUsers, e.metrics.ConnectedAddrs
	handler := e.guardHost(e.Handler())
	if e.cfg.TLS == nil {
		// WebSocket upgrades skip net/http (front.go).
		e.front = newFront(ln, handler, headerTimeout, maxHeaderBytes, e.log,
			func(v any) { e.recovered("upgrade", v, e.log) }, "GET /ws", "GET /connection/websocket")
		ln = e.front
	}
	e.listener = ln
	e.server = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: headerTimeout,
		// The timeouts below are for plain HTTP (probes, scrapes, pprof).
		// They cannot cut a WebSocket short: Hijack clears the connection's
		// deadlines, and from then on the edge sets its own (ReadTimeout,
		// WriteTimeout, MessageTimeout).
		ReadTimeout: e.cfg.HTTPReadTimeout,
		// Long enough for a 30 s /debug/pprof/profile or trace (pprof
		// refuses a duration above it), short enough that a client that
		// never reads a response does not hold its goroutine for ever.
		WriteTimeout: 2 * time.Minute,
		// Without it an idle keep-alive connection is held for ever, and
		// outside --max-connections.
		IdleTimeout:    e.cfg.HTTPIdleTimeout,
		MaxHeaderBytes: maxHeaderBytes,
	}
	go func() { e.serveErr <- e.server.Serve(ln) }()
	e.started.Store(true)
	e.log.Info("edge listening", "addr", ln.Addr().String(), "insecure", e.cfg.Insecure, "tls", e.cfg.TLS != nil)
	return nil
}

// The HTTP request limits, the same on net/http's path and front's: a
// header may take headerTimeout to arrive, and carries at most a JWT and a
// few cookies (net/http's default, 1 MiB, lets every connection park that
// much).
const (
	headerTimeout  = 10 * time.Second
	maxHeaderBytes = 64 << 10
)

// Addr is the bound HTTP address (after Start).
func (e *Edge) Addr() string { return e.listener.Addr().String() }

// Run starts the edge, serves until ctx ends, then drains within the
// configured grace period.
func (e *Edge) Run(ctx context.Context) error {
	if err := e.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case err := <-e.serveErr:
		return fmt.Errorf("http server: %w", err)
	}
	dctx, cancel := context.WithTimeout(context.Background(), e.cfg.DrainTimeout)
	defer cancel()
	return e.Shutdown(dctx)
}

// Shutdown drains the edge: it stops accepting connections and requests,
// waits for in-flight publishes to be acked, tells every client to reconnect
// elsewhere (close code 4003) after flushing what it was owed, and drains the
// NATS connection. ctx bounds the whole drain.
func (e *Edge) Shutdown(ctx context.Context) error {
	e.mu.Lock()
	first := e.draining.CompareAndSwap(false, true)
	e.mu.Unlock()
	if !first {
		return nil
	}
	e.log.Info("draining", "connections", e.connCount())
	// No new connections: the listener closes; /readyz already says 503.
	shutdownErr := make(chan error, 1)
	go func() {
		err := e.server.Shutdown(ctx)
		if e.front != nil {
			// Upgrades read by front are not net/http's to wait for.
			err = errors.Join(err, e.front.wait(ctx))
		}
		shutdownErr <- err
	}()

	conns := e.snapshot()
	for _, c := range conns {
		c.draining.Store(true)
	}
	var err error
	if werr := e.pub.wait(ctx); werr != nil {
		err = fmt.Errorf("drain: publishes still in flight: %w", werr)
	}
	for _, c := range conns {
		c.close(protocol.CloseShuttingDown, "edge shutting down: reconnect to another edge")
	}
	// Closing cancelled each connection's work (its context); what the edge
	// does for nobody in particular ends too.
	e.cancel()
	handlersDone := make(chan struct{})
	go func() { e.handlers.Wait(); close(handlersDone) }()
	select {
	case <-handlersDone:
	case <-ctx.Done():
		err = errors.Join(err, fmt.Errorf("drain: connections still closing: %w", ctx.Err()))
	}
	if serr := <-shutdownErr; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	e.presence.close() // after the connections' leaves: bye is the last word
	if derr := e.nc.Drain(); derr != nil && !errors.Is(derr, nats.ErrConnectionClosed) {
		err = errors.Join(err, fmt.Errorf("drain nats: %w", derr))
	}
	if e.resync != nil {
		e.resync.close()
	}
	if e.natsb != nil {
		e.natsb.stop() // every client is gone: nobody is owed a live message or an ack
	}
	if e.pub != nil {
		e.pub.stop()
	}
	if e.poller != nil {
		e.poller.close()
	}
	e.log.Info("drained", "err", err)
	return err
}

func (e *Edge) snapshot() []*Conn {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*Conn, 0, len(e.conns))
	for c := range e.conns {
		out = append(out, c)
	}
	return out
}

func (e *Edge) connCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.conns)
}

// Handler serves /ws, /metrics, /healthz and /readyz.
func (e *Edge) Handler() http.Handler {
	mux := metrics.Endpoints(e.registry,
		metrics.Requirement{Unmet: "draining", Met: func() bool { return !e.draining.Load() }},
		metrics.Requirement{Unmet: "starting", Met: e.started.Load},
		metrics.Requirement{Unmet: "not connected to NATS", Met: func() bool { return e.nc.IsConnected() }},
	)
	mux.HandleFunc("GET /ws", e.serveWS)
	// Centrifugo's client protocol v2 (JSON), for its SDKs (centrifugo.go).
	mux.HandleFunc("GET /connection/websocket", e.serveCentrifugo)
	if e.cfg.UI != nil {
		mux.Handle("GET /", e.cfg.UI)
	}
	if e.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func (e *Edge) serveWS(w http.ResponseWriter, r *http.Request) {
	if !e.mayUpgrade(w, r) {
		return
	}
	ident, err := e.authenticate(r)
	if err != nil {
		e.metrics.ConnectsTotal.WithLabelValues("unauthorized").Inc()
		httpError(w, http.StatusUnauthorized, protocol.CodeUnauthorized, err.Error())
		return
	}
	addr := clientAddr(r, e.cfg.TrustedProxies)
	key := limitKey(addr)
	// From here on every way out releases the lease, except the one that
	// hands it to the registered connection (released by connGone).
	lease, why := e.admit.acquire(&e.cfg, ident.User, key)
	switch why {
	case edgeFull:
		e.refuseFull(w)
		return
	case userLimit:
		e.metrics.ConnectsTotal.WithLabelValues("user_limit").Inc()
		httpError(w, http.StatusTooManyRequests, protocol.CodeRateLimited,
			fmt.Sprintf("user %q already has %d connections to this edge (--max-connections-per-user); close one first", ident.User, e.cfg.MaxConnsPerUser))
		return
	case addrLimit:
		e.metrics.ConnectsTotal.WithLabelValues("ip_limit").Inc()
		httpError(w, http.StatusTooManyRequests, protocol.CodeRateLimited,
			fmt.Sprintf("address %s already has %d connections to this edge (--max-connections-per-ip); close one first", keyString(addr, key), e.cfg.MaxConnsPerIP))
		return
	}
	// The user's DM and the broadcast subscriptions exist before the client
	// sees the upgrade succeed: a direct message sent to it from then on
	// reaches it (frames wait in its queue until the socket is attached).
	c := newConn(e, e.nextConn.Add(1), nil, ident)
	if err := c.joinPersonal(); err != nil {
		e.admit.release(lease)
		e.metrics.ConnectsTotal.WithLabelValues("refused").Inc()
		c.logger().Warn("cannot serve a connection", "err", err)
		httpError(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, "edge cannot reach NATS; connect to another edge")
		return
	}
	ws, err := e.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// The upgrader already answered with an HTTP error.
		c.leavePersonal()
		e.admit.release(lease)
		e.metrics.ConnectsTotal.WithLabelValues("refused").Inc()
		return
	}
	e.metrics.ConnectsTotal.WithLabelValues("ok").Inc()
	c.attach(ws)
	if !e.register(c, lease) {
		return
	}
	c.debug("connected", "remote", r.RemoteAddr)
	// The connection lives on a goroutine of its own so that this handler
	// returns: net/http then lets go of its per-connection state (request,
	// buffered writer, the handler's deep stack), several KiB per idle
	// WebSocket.
	go e.runConn(c, ident)
}

// register counts an attached connection as the edge's, holding lease, or
// closes it (shutting down) if the drain began first.
func (e *Edge) register(c *Conn, lease *lease) bool {
	// Registration and the drain's start are ordered by e.mu: a connection
	// either is counted before Shutdown waits, or sees the drain and leaves.
	e.mu.Lock()
	if e.draining.Load() {
		e.mu.Unlock()
		c.leavePersonal()
		e.admit.release(lease)
		_ = c.ws.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(c.wireCloseCode(protocol.CloseShuttingDown), "edge shutting down: reconnect to another edge"),
			time.Now().Add(time.Second))
		_ = c.ws.Close()
		return false
	}
	// Bound before the connection is registered: from then on a close
	// (a drain, the token timer) may run its teardown, and connGone must
	// find the lease.
	e.admit.bind(c, lease)
	e.handlers.Add(1)
	e.conns[c] = struct{}{}
	e.mu.Unlock()
	e.metrics.Connections.Inc()
	return true
}

// mayUpgrade answers a WebSocket request that cannot be served (the edge
// drains, the page's origin is refused, the edge is full) and reports
// whether it may go on; both client protocols' endpoints start with it.
func (e *Edge) mayUpgrade(w http.ResponseWriter, r *http.Request) bool {
	if e.draining.Load() {
		e.metrics.ConnectsTotal.WithLabelValues("refused").Inc()
		httpError(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, "edge is shutting down; connect to another edge")
		return false
	}
	// The origin first: a refused page learns nothing about the user it
	// claims to be, and costs no token verification.
	if !e.checkOrigin(r) {
		origin := r.Header.Get("Origin")
		e.metrics.ConnectsTotal.WithLabelValues("forbidden").Inc()
		e.logRefusal(&e.admit.originLog, "refused a browser origin", "origin", origin, "host", r.Host, "allow_with", "--allowed-origins")
		httpError(w, http.StatusForbidden, protocol.CodeForbidden,
			fmt.Sprintf("origin %q may not connect to this edge (the operator can allow it with --allowed-origins)", origin))
		return false
	}
	// A cheap early answer for a full edge; acquire is the exact one.
	if e.cfg.MaxConnections > 0 && e.admit.count() >= e.cfg.MaxConnections {
		e.refuseFull(w)
		return false
	}
	return true
}

// runConn serves an upgraded connection until it ends.
func (e *Edge) runConn(c *Conn, ident *auth.Identity) {
	c.scheduleExpiry(ident.Expires)
	c.serve()
}

// connGone is the end of a connection's teardown (see Conn.teardown).
func (e *Edge) connGone(c *Conn) {
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	e.admit.releaseConn(c)
	e.metrics.Connections.Dec()
	e.handlers.Done()
}

func (e *Edge) authenticate(r *http.Request) (*auth.Identity, error) {
	return e.identify(auth.TokenFromRequest(r), r.URL.Query().Get("user"))
}

// identify is who a token speaks for, or (insecure mode, no token) the dev
// user named by ?user=; both client protocols authenticate through it.
func (e *Edge) identify(token, user string) (*auth.Identity, error) {
	if token != "" {
		if e.verifier == nil {
			return nil, errors.New("this edge has no JWT key configured; connect with ?user= in insecure mode")
		}
		return e.verifier.Verify(token)
	}
	if user != "" && e.cfg.Insecure {
		if !protocol.ValidName(user) {
			return nil, fmt.Errorf("user %q is not 1-%d characters of [A-Za-z0-9_-]", user, protocol.MaxNameLen)
		}
		return auth.DevIdentity(user), nil
	}
	if e.cfg.Insecure {
		return nil, errors.New("missing credentials: send Authorization: Bearer <JWT>, ?token=<JWT> or (insecure mode) ?user=<name>")
	}
	return nil, errors.New("missing credentials: send Authorization: Bearer <JWT> or ?token=<JWT>")
}

// checkOrigin reports whether the page that opened this WebSocket (its
// Origin; clients that send none are not browsers and always pass) may use
// it. --allowed-origins entries pass. An insecure edge lets anyone be any
// user, so only pages of this machine pass besides: its Host header cannot
// be trusted to mean "same site", as a DNS-rebinding page sends its own
// domain there. A secure edge otherwise accepts same-host pages, with the
// scheme checked where the edge knows it.
func (e *Edge) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	// "null" (file:// pages, sandboxed frames, redirects) names no site to
	// trust: refused even when listed or under "*". Other schemes (a
	// browser extension's) pass only when listed exactly.
	if strings.EqualFold(origin, "null") {
		return false
	}
	scheme, host, ok := parseOrigin(origin)
	for _, a := range e.cfg.AllowedOrigins {
		if (a == "*" && ok) || strings.EqualFold(strings.TrimSuffix(a, "/"), origin) {
			return true
		}
	}
	switch {
	case !ok:
		return false
	case e.cfg.Insecure:
		return isLoopbackHost(hostOnly(host))
	case len(e.cfg.AllowedOrigins) > 0, !strings.EqualFold(host, r.Host):
		return false
	case r.TLS != nil:
		return scheme == "https"
	}
	if proto := forwardedProto(r, e.cfg.TrustedProxies); proto != "" {
		return scheme == proto
	}
	// Plain HTTP from an unknown hop: usually a TLS-terminating proxy the
	// operator did not list, so an https page is as plausible as http.
	return true
}

// refuseFull answers an upgrade beyond --max-connections.
func (e *Edge) refuseFull(w http.ResponseWriter) {
	e.metrics.ConnectsTotal.WithLabelValues("refused").Inc()
	httpError(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, "edge is full; connect to another edge")
}

// httpError answers a refused request and closes the connection after it
// (a refused client reconnects, perhaps elsewhere, rather than reuse it).
func httpError(w http.ResponseWriter, status int, code protocol.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Connection", "close")
	w.WriteHeader(status)
	b := []byte(`{"error":{"code":"` + string(code) + `","message":`)
	b = protocol.AppendString(b, msg)
	w.Write(append(b, "}}\n"...))
}
