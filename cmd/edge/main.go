// Command edge is Parley's WebSocket edge. With no flags it is the whole mesh
// on a laptop: an embedded NATS server with JetStream, the edge in insecure
// dev mode, NATS exposed on 127.0.0.1:4222 for backend services.
//
//	edge [flags]            serve
//	edge provision [flags]  create or update the JetStream resources and exit
//
// Every flag is checked before anything starts: a value that cannot work is
// a one-line error naming the flag, exit status 2 (see parse).
package main

import (
	"context"
	"crypto"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/gcpolicy"
	"github.com/parley-mesh/parley/internal/natsrun"
	"github.com/parley-mesh/parley/internal/reload"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

func main() { config.Main("edge", run) }

type options struct {
	edge          edge.Config
	nats          config.NATS
	natsListen    string
	data          string
	jwtSecret     string
	jwtSecretFile string
	jwtPublicKey  string
	origins       string
	// jwks configures --jwt-jwks-url and its refreshes; tlsCert and tlsKey
	// are --tls-cert/--tls-key; reloadEvery is --reload-interval.
	jwks            auth.JWKSConfig
	tlsCert, tlsKey string
	reloadEvery     time.Duration
	keys            *auth.Keys          // the JWT keys in use (loadAuth)
	cert            *reload.Certificate // the TLS certificate in use (loadTLS)
	log             config.Log
	tracing         config.Tracing
	mem             gcpolicy.Flags

	// hosts and proxies are --allowed-hosts and --trusted-proxies as given.
	hosts   string
	proxies string
	// listenAny lets an insecure edge, or the dev mesh's unauthenticated
	// NATS server, listen beyond loopback (--insecure-listen-any).
	listenAny bool
	// ui is --ui; uiGiven says it was given (flag or PARLEY_UI): without
	// it the chat page is on in the dev mesh and off otherwise (ui.go).
	ui, uiGiven bool
}

// edgeSynopsis and provisionSynopsis open --help.
const (
	edgeSynopsis = `Usage:
  edge [flags]            serve WebSocket clients at /ws. Without --nats it is the whole dev
                          mesh on this machine: embedded NATS with JetStream (data in --data),
                          presence and archiver in-process, insecure ?user= mode without JWT keys
  edge provision [flags]  create or update the chat stream PARLEY_CHAT and exit, for a one-shot
                          job (the edge also does it at every start); edge provision --help

Tracing (OTLP/HTTP) is off unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER=otlp is
set; OTEL_SERVICE_NAME defaults to parley-edge (docs/tracing.md).`
	provisionSynopsis = `Usage:
  edge provision --nats URL [flags]
      create or update the chat stream PARLEY_CHAT with the --stream-* settings below and
      exit (0 when done). The edge does the same at every start; this is for a one-shot job
      (the Helm chart's provision hook). It serves no client, so it takes no JWT flags.`
)

// parse reads the command line and the environment and checks every flag.
// provision parses the provision subcommand's flags: NATS, stream, logging.
func parse(args []string, getenv func(string) string, provision bool) (*options, error) {
	o := &options{edge: edge.DefaultConfig(), nats: config.NATS{Name: "parley-edge"}}
	c := &o.edge
	name, synopsis := "edge", edgeSynopsis
	if provision {
		name, synopsis = "edge provision", provisionSynopsis
	}
	fs := config.NewFlags(name, synopsis)
	o.nats.Embedded = !provision
	o.nats.Register(fs.FlagSet)
	if !provision {
		o.registerServe(fs)
	}
	fs.IntVar(&c.Stream.Replicas, "stream-replicas", c.Stream.Replicas, "chat stream replicas, 1 to 5 (3 in production clusters)")
	fs.DurationVar(&c.Stream.Duplicates, "stream-duplicates", c.Stream.Duplicates, "dedup window for msg_id / Nats-Msg-Id (at most --stream-max-age)")
	fs.DurationVar(&c.Stream.MaxAge, "stream-max-age", c.Stream.MaxAge, "drop messages older than this (0: keep)")
	fs.Int64Var(&c.Stream.MaxBytes, "stream-max-bytes", c.Stream.MaxBytes, "chat stream size bound (0: none)")
	fs.Int64Var(&c.Stream.MaxMsgsPerSubject, "stream-max-msgs-per-subject", c.Stream.MaxMsgsPerSubject, "messages kept per room/user (0: no limit)")
	o.log.Register(fs.FlagSet)
	if err := fs.Parse(args, getenv); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) { o.uiGiven = o.uiGiven || f.Name == "ui" })
	if provision && o.nats.URLs == "" {
		return nil, config.Usagef("provision needs --nats (the dev mesh's embedded server provisions itself at start)")
	}
	if err := config.First(
		o.nats.Check(),
		checkStream(c.Stream),
		o.log.SetLogger(&c.Logger),
		o.tracing.Read(getenv),
	); err != nil {
		return nil, err
	}
	if !provision {
		if err := o.checkServe(); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// registerServe adds the flags of the serving edge (not of provision).
func (o *options) registerServe(fs *config.Flags) {
	c := &o.edge
	fs.StringVar(&c.Listen, "listen", c.Listen, "HTTP address for /ws, /metrics, /healthz, /readyz")
	fs.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", "client address of the embedded NATS server (dev mode; port 0: any free port)")
	fs.StringVar(&o.data, "data", "./data", "data directory of the embedded NATS server and the dev archiver (dev mode), relative to the working directory")
	fs.BoolVar(&c.Insecure, "insecure", false, "accept ?user=NAME without a token (implied in dev mode without JWT keys)")
	fs.StringVar(&o.jwtSecret, "jwt-secret", "", "HS256/384/512 shared secret, at least 32 bytes (shorter: refused, or only a warning with --insecure)")
	fs.StringVar(&o.jwtSecretFile, "jwt-secret-file", "", "file holding the HS256/384/512 shared secret, one per line (old and new during a rotation; surrounding whitespace is trimmed); re-read when it changes or on SIGHUP")
	fs.StringVar(&o.jwtPublicKey, "jwt-public-key", "", "PEM file with the RS256/PS256/ES256/EdDSA public key(s) or certificate(s), several during a rotation; with a secret too, tokens signed with either are accepted")
	fs.StringVar(&o.jwks.URL, "jwt-jwks-url", "", "JWKS endpoint of the identity provider (https://…/.well-known/jwks.json): keys chosen by the token's kid, refetched every --jwt-jwks-refresh and on an unknown kid")
	fs.DurationVar(&o.jwks.Refresh, "jwt-jwks-refresh", 15*time.Minute, "refetch the JWKS this often (a failed fetch keeps the last good key set)")
	fs.DurationVar(&o.jwks.MinRefresh, "jwt-jwks-min-refresh", time.Minute, "at most one extra JWKS fetch per this interval for tokens whose kid the set lacks")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate (chain) file: serve wss:// and https:// on --listen (with --tls-key); re-read when it changes or on SIGHUP")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key file of --tls-cert")
	fs.DurationVar(&o.reloadEvery, "reload-interval", 10*time.Second, "check --jwt-secret-file, --jwt-public-key, --tls-cert and --tls-key for changes this often (0: only on SIGHUP)")
	fs.StringVar(&c.Auth.Issuer, "jwt-issuer", "", "required iss claim")
	fs.StringVar(&c.Auth.Audience, "jwt-audience", "", "required aud claim")
	fs.DurationVar(&c.Auth.Leeway, "jwt-leeway", 5*time.Second, "clock skew allowed on exp/nbf")
	fs.StringVar(&o.origins, "allowed-origins", "", "comma-separated browser origins (scheme://host[:port], not null) allowed to connect, * for any (default: same host; insecure mode: pages on this machine, any port)")
	fs.StringVar(&o.hosts, "allowed-hosts", "", "insecure mode: comma-separated Host names served besides localhost and IP addresses, * for any (default: none, against DNS rebinding)")
	fs.BoolVar(&o.listenAny, "insecure-listen-any", false, "let an insecure edge (and the dev mesh's NATS, which has no authentication) listen on a non-loopback address")

	fs.BoolVar(&c.ReusePort, "reuse-port", false, "set SO_REUSEPORT so several edge processes share --listen")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go profiles at /debug/pprof/ (do not expose publicly)")
	fs.BoolVar(&o.ui, "ui", false, "serve the chat page at / (default: true in the dev mesh, without --nats; false otherwise)")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "refuse connections beyond this many (0: unlimited)")
	fs.IntVar(&c.MaxConnsPerUser, "max-connections-per-user", c.MaxConnsPerUser, "refuse a user's connections to this edge beyond this many with 429 (0: unlimited)")
	fs.IntVar(&c.MaxConnsPerIP, "max-connections-per-ip", c.MaxConnsPerIP, "refuse a client address's (IPv6: /64's) connections to this edge beyond this many with 429 (0: unlimited; behind a proxy it needs --trusted-proxies)")
	fs.StringVar(&o.proxies, "trusted-proxies", "", "comma-separated CIDRs or addresses of proxies whose X-Forwarded-For (client address) and X-Forwarded-Proto are believed")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", c.HTTPIdleTimeout, "close a keep-alive HTTP connection idle this long (WebSockets have --read-timeout)")
	fs.IntVar(&c.MaxRecover, "max-recover", c.MaxRecover, "messages a sub with since reads at once with Direct Get and sends with its reply (within half of --max-queued-bytes); a longer resume streams through an ordered consumer, paced by the client; the most a sub with last returns")
	fs.IntVar(&c.MaxReplays, "max-replays", c.MaxReplays, "long resumes (beyond --max-recover) replayed at once on this edge, one JetStream consumer each; more wait for a slot within the sub's 10 s deadline, then get unavailable")
	fs.IntVar(&c.MaxHistory, "max-history", c.MaxHistory, "messages in one history reply")
	fs.IntVar(&c.MaxHistoryBytes, "max-history-bytes", c.MaxHistoryBytes, "bytes of messages in one history reply")
	fs.IntVar(&c.RoomCache, "room-cache", c.RoomCache, "latest messages kept per room to serve resumes without reading the stream; a room stays subscribed 30s after its last subscriber for that (0: none)")
	fs.IntVar(&c.RoomCacheBytes, "room-cache-bytes", c.RoomCacheBytes, "bytes of --room-cache messages kept per room, oldest dropped first (a message counts its frame + 64 B, and the room's array 40 B a slot)")
	fs.IntVar(&c.RoomCacheTotalBytes, "room-cache-total-bytes", c.RoomCacheTotalBytes, "bytes of --room-cache messages kept by all rooms of the edge together, the busiest rooms' oldest dropped first; the heap they keep alive stays under 1.25 times this (the allocator's rounding of frames over 512 B)")
	fs.IntVar(&c.MaxFrameBytes, "max-frame-bytes", c.MaxFrameBytes, "larger client frames get too_large (at most --hard-frame-bytes)")
	fs.IntVar(&c.HardFrameLimit, "hard-frame-bytes", c.HardFrameLimit, "larger client frames close the connection (1009)")
	fs.IntVar(&c.MaxQueuedMsgs, "max-queued-msgs", c.MaxQueuedMsgs, "outbound queue per connection before a slow-consumer close")
	fs.IntVar(&c.MaxQueuedBytes, "max-queued-bytes", c.MaxQueuedBytes, "outbound bytes per connection before a slow-consumer close")
	fs.IntVar(&c.MaxSubscriptions, "max-subscriptions", c.MaxSubscriptions, "rooms per connection")
	fs.Float64Var(&c.RequestRate, "request-rate", c.RequestRate, "requests per second per connection")
	fs.IntVar(&c.RequestBurst, "request-burst", c.RequestBurst, "request burst per connection")
	fs.Float64Var(&c.PublishRate, "publish-rate", c.PublishRate, "publishes per second per connection")
	fs.IntVar(&c.PublishBurst, "publish-burst", c.PublishBurst, "publish burst per connection")
	fs.IntVar(&c.MaxInflightPublishes, "max-inflight-publishes", c.MaxInflightPublishes, "unacked publishes per connection")
	fs.DurationVar(&c.PingInterval, "ping-interval", c.PingInterval, "WebSocket ping period (under --read-timeout)")
	fs.DurationVar(&c.ReadTimeout, "read-timeout", c.ReadTimeout, "close a connection silent for this long")
	fs.DurationVar(&c.ResyncInterval, "resync-interval", c.ResyncInterval, "check every subscribed room against the stream this often for messages whose live republish was lost (leader changes and reconnects check at once); each check is one Direct Get per room")
	fs.DurationVar(&c.MessageTimeout, "message-timeout", c.MessageTimeout, "close a connection whose client message takes longer than this to arrive whole (a trickled frame holds its buffer no longer)")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "close a connection whose write blocks this long")
	fs.DurationVar(&c.WriteDelay, "write-delay", 0, "collect pushes this long before each write: fewer syscalls at high fan-out, that much more latency (0: write at once)")
	fs.DurationVar(&c.PublishTimeout, "publish-timeout", c.PublishTimeout, "wait this long for a JetStream ack before answering unavailable")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "grace period of a SIGTERM drain")
	fs.StringVar(&c.Presence.EdgeID, "edge-id", "", "this edge's name in presence events, unique among live edges, e.g. the pod name (default: edge-<random>)")
	fs.DurationVar(&c.Presence.Heartbeat, "presence-heartbeat", 2*time.Second, "how often the edge tells presence workers it is alive (keep well under their --edge-timeout)")
	o.mem.Register(fs.FlagSet)
}

// checkStream checks the chat stream's settings before NATS sees them:
// its own refusals name neither the flag nor the fix.
func checkStream(s pjs.StreamOptions) error {
	if err := config.First(
		config.InRange("stream-replicas", s.Replicas, 1, 5), // JetStream's bound
		config.Positive("stream-duplicates", s.Duplicates),
		config.NotNegative("stream-max-age", s.MaxAge, "keep"),
		config.NotNegative("stream-max-bytes", s.MaxBytes, "no bound"),
		config.NotNegative("stream-max-msgs-per-subject", s.MaxMsgsPerSubject, "no limit"),
	); err != nil {
		return err
	}
	if s.MaxAge > 0 && s.MaxAge < s.Duplicates {
		return config.Usagef("--stream-max-age %v is shorter than --stream-duplicates %v: JetStream needs the dedup window within the retention; lower --stream-duplicates or raise --stream-max-age", s.MaxAge, s.Duplicates)
	}
	return nil
}

// checkServe checks the serving edge's flags, in flag order, and turns the
// list flags into the config. Each zero refused here would otherwise be
// silently replaced by the default (edge.Config's zero values mean that).
func (o *options) checkServe() error {
	c := &o.edge
	if err := config.First(
		config.HostPort("listen", c.Listen),
		config.HostPort("nats-listen", o.natsListen),
		o.checkData(),
		config.NotNegative("jwt-leeway", c.Auth.Leeway, "none"),
		o.checkJWKS(),
		o.checkTLS(),
		config.NotNegative("reload-interval", o.reloadEvery, "only on SIGHUP"),
		o.splitOrigins(),
		o.splitHosts(),
		config.NotNegative("max-connections", c.MaxConnections, "unlimited"),
		config.NotNegative("max-connections-per-user", c.MaxConnsPerUser, "unlimited"),
		config.NotNegative("max-connections-per-ip", c.MaxConnsPerIP, "unlimited"),
		o.parseProxies(),
		config.Positive("http-idle-timeout", c.HTTPIdleTimeout),
		config.Positive("max-recover", c.MaxRecover),
		config.Positive("max-replays", c.MaxReplays),
		config.Positive("max-history", c.MaxHistory),
		config.Positive("max-history-bytes", c.MaxHistoryBytes),
		config.NotNegative("room-cache", c.RoomCache, "none"),
		config.Positive("room-cache-bytes", c.RoomCacheBytes),
		config.Positive("room-cache-total-bytes", c.RoomCacheTotalBytes),
		config.Positive("max-frame-bytes", c.MaxFrameBytes),
		config.Positive("hard-frame-bytes", c.HardFrameLimit),
		config.Positive("max-queued-msgs", c.MaxQueuedMsgs),
		config.Positive("max-queued-bytes", c.MaxQueuedBytes),
		config.Positive("max-subscriptions", c.MaxSubscriptions),
		config.Positive("request-rate", c.RequestRate),
		config.Positive("request-burst", c.RequestBurst),
		config.Positive("publish-rate", c.PublishRate),
		config.Positive("publish-burst", c.PublishBurst),
		config.Positive("max-inflight-publishes", c.MaxInflightPublishes),
		config.Positive("ping-interval", c.PingInterval),
		config.Positive("read-timeout", c.ReadTimeout),
		config.Positive("message-timeout", c.MessageTimeout),
		config.Positive("resync-interval", c.ResyncInterval),
		config.Positive("write-timeout", c.WriteTimeout),
		config.NotNegative("write-delay", c.WriteDelay, "write at once"),
		config.Positive("publish-timeout", c.PublishTimeout),
		config.Positive("drain-timeout", c.DrainTimeout),
		checkEdgeID(c.Presence.EdgeID),
		config.Positive("presence-heartbeat", c.Presence.Heartbeat),
		o.mem.Check(),
	); err != nil {
		return err
	}
	// Pairs the edge would otherwise reconcile silently.
	switch {
	case c.MaxFrameBytes > c.HardFrameLimit:
		return config.Usagef("--max-frame-bytes %d exceeds --hard-frame-bytes %d: raise --hard-frame-bytes too (a frame between them gets too_large, one beyond closes the connection)", c.MaxFrameBytes, c.HardFrameLimit)
	case c.ReadTimeout <= c.PingInterval:
		// Silence is checked when a ping is due: every quiet client would
		// be closed before its pong could arrive.
		return config.Usagef("--read-timeout %v must be longer than --ping-interval %v (a quiet client answers only the pings)", c.ReadTimeout, c.PingInterval)
	}
	return nil
}

func (o *options) checkData() error {
	if o.nats.URLs == "" && strings.TrimSpace(o.data) == "" {
		return config.Usagef("--data must name a directory (the dev mesh keeps JetStream and the archive there)")
	}
	return nil
}

func checkEdgeID(id string) error {
	if id != "" && !protocol.ValidName(id) {
		return config.Usagef("--edge-id %q: use 1-%d characters of [A-Za-z0-9_-]", id, protocol.MaxNameLen)
	}
	return nil
}

func (o *options) parseProxies() error {
	proxies, err := edge.ParseTrustedProxies(o.proxies)
	if err != nil {
		return config.Usagef("--trusted-proxies: %w", err)
	}
	o.edge.TrustedProxies = proxies
	return nil
}

// splitOrigins takes --allowed-origins apart. The edge compares an entry
// with the page's Origin header as a whole, so an entry with a path or
// without a scheme would never match anything: refused rather than
// ignored. Any scheme passes (an app's capacitor://localhost, a browser
// extension's). "null" is refused: it is the origin of every sandboxed
// frame and file: page, on any site.
func (o *options) splitOrigins() error {
	o.edge.AllowedOrigins = nil
	for _, a := range splitList(o.origins) {
		if a == "null" {
			return config.Usagef("--allowed-origins null would let any sandboxed frame or file: page, from anywhere, connect; serve the page from an origin instead")
		}
		if a != "*" {
			u, err := url.Parse(a)
			if err != nil || u.Scheme == "" || u.Host == "" || u.User != nil ||
				strings.TrimPrefix(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" {
				return config.Usagef("--allowed-origins %q: an origin is scheme://host[:port] as a browser sends it, such as http://localhost:3000 (or * for any)", a)
			}
		}
		o.edge.AllowedOrigins = append(o.edge.AllowedOrigins, a)
	}
	return nil
}

// splitHosts takes --allowed-hosts apart: names, compared with the Host
// header without its port.
func (o *options) splitHosts() error {
	o.edge.AllowedHosts = nil
	for _, h := range splitList(o.hosts) {
		if strings.ContainsAny(h, ":/ ") {
			return config.Usagef("--allowed-hosts %q: give host names only, without scheme or port (IP addresses are always served)", h)
		}
		o.edge.AllowedHosts = append(o.edge.AllowedHosts, h)
	}
	return nil
}

// splitList splits a comma-separated flag, dropping the spaces people put
// after commas and empty entries.
func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	return runTo(ctx, args, getenv, os.Stderr)
}

// runTo is run with the dev banner written to banner (tests read it).
func runTo(ctx context.Context, args []string, getenv func(string) string, banner io.Writer) error {
	provisionOnly, args := config.Subcommand(args, "provision")
	o, err := parse(args, getenv, provisionOnly)
	if err != nil {
		return err
	}
	log := o.edge.Logger
	if provisionOnly {
		return provision(ctx, o, log)
	}
	if err := o.loadAuth(log); err != nil {
		return err
	}
	if err := o.loadTLS(); err != nil {
		return err
	}
	if err := o.checkExposure(o.nats.URLs == ""); err != nil {
		return err
	}
	if o.nats.URLs != "" && !o.edge.Auth.Enabled() && !o.edge.Insecure {
		return config.Usagef("%w: set --jwt-secret/--jwt-public-key/--jwt-jwks-url, or --insecure to accept ?user= (never in production)", edge.ErrNoAuth)
	}
	// Every check passed: the memory policy is the first thing set. The dev
	// mesh's NATS server, presence worker and archiver share the process
	// and its policy.
	if _, _, err := gcpolicy.Apply(o.mem, getenv, log); err != nil {
		return err
	}
	// Deferred first, so it runs last: the spans of the drain and of the dev
	// mesh's workers are flushed too. The dev mesh's presence worker and
	// archiver trace through the same provider, under the edge's service
	// name (their spans name their component).
	tp, stopTracing, err := o.tracing.Start(ctx, log, "parley-edge", o.edge.Presence.EdgeID)
	if err != nil {
		return err
	}
	defer stopTracing()
	o.edge.TracerProvider = tp

	var nc *nats.Conn
	if o.nats.URLs == "" {
		var srv interface{ Shutdown() }
		nc, srv, err = o.startEmbedded(log, banner)
		if err == nil {
			defer srv.Shutdown()                  // after the edge drained: JetStream flushes its files
			defer startDevPresence(srv, o, log)() // starts now, stops after the edge drained
			defer startDevArchiver(srv, o, log)()
		}
	} else {
		nc, err = o.nats.Connect(o.nats.URLs, log)
	}
	if err != nil {
		return err
	}
	defer nc.Close()

	if o.edge.Insecure {
		log.Warn("INSECURE MODE: any client can connect as any user with ?user=NAME; never expose this edge")
		if !isLoopbackAddr(o.edge.Listen) {
			log.Warn("insecure edge reachable beyond this machine (--insecure-listen-any)", "listen", o.edge.Listen)
		}
	}
	// Reloads and JWKS refreshes stop with the edge, also when it fails.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jwks, err := o.startJWKS(ctx, log)
	if err != nil {
		return err
	}
	if err := o.mountUI(log); err != nil {
		return err
	}
	e, err := edge.New(o.edge, nc)
	if err != nil {
		return err
	}
	if jwks != nil {
		e.Registry().MustRegister(jwks)
	}
	if o.cert != nil {
		e.Registry().MustRegister(o.cert)
	}
	if w := o.startReload(ctx, log); w != nil {
		e.Registry().MustRegister(w)
	}
	return e.Run(ctx)
}

// provision is `edge provision`: the chat stream, then exit. It serves no
// client, so it needs no JWT key.
func provision(ctx context.Context, o *options, log *slog.Logger) error {
	return o.nats.Provision(ctx, log, func(ctx context.Context, js jetstream.JetStream) error {
		_, err := pjs.Provision(ctx, js, o.edge.Stream)
		return err
	}, "stream", pjs.ChatStream)
}

// minSecretBytes is RFC 7518's floor for an HS256 key (3.2: a key of the
// hash's size, 256 bits). A shorter secret can be brute-forced offline from
// any one token a client holds.
const minSecretBytes = 32

// loadAuth reads the JWT key flags into the edge's auth config and checks
// them now, so a bad key file is a usage error naming its flag rather than
// a failure later in edge.New. The keys go into o.keys, which reloads of
// the key files (startReload) and the JWKS (startJWKS) update later.
func (o *options) loadAuth(log *slog.Logger) error {
	a := &o.edge.Auth
	if o.jwtSecret != "" && o.jwtSecretFile != "" {
		return config.Usagef("give --jwt-secret or --jwt-secret-file, not both")
	}
	set, err := o.readKeys(log)
	if err != nil {
		return err
	}
	if set.Empty() && o.jwks.URL == "" {
		return nil
	}
	o.keys = auth.NewKeys(set)
	a.Keys = o.keys
	v, err := auth.NewVerifier(*a)
	if err != nil {
		return config.Usagef("--jwt-leeway: %w", err)
	}
	if len(set.Secrets) > 0 && (len(set.Public) > 0 || o.jwks.URL != "") {
		// Both is meant for moving from one to the other: say so, so a
		// forgotten secret does not stay a second way in.
		log.Warn("JWT secret and public key both configured: tokens signed with either are accepted; drop the one being retired",
			"algorithms", strings.Join(v.Algorithms(), ","))
	}
	return nil
}

// readKeys reads the secret and public key flags and files: at start (its
// errors are usage errors naming the flag) and at every reload of the key
// files (its errors are logged and the keys in use stay).
func (o *options) readKeys(log *slog.Logger) (auth.KeySet, error) {
	var secrets [][]byte
	flagName := "--jwt-secret"
	switch {
	case o.jwtSecret != "":
		secrets = [][]byte{[]byte(o.jwtSecret)}
	case o.jwtSecretFile != "":
		flagName = "--jwt-secret-file"
		b, err := config.ReadFileFlag("jwt-secret-file", o.jwtSecretFile)
		if err != nil {
			return auth.KeySet{}, err
		}
		if secrets, err = auth.ParseSecrets(b); err != nil {
			return auth.KeySet{}, config.Usagef("--jwt-secret-file %s: %w", o.jwtSecretFile, err)
		}
	}
	for i, sec := range secrets {
		if n := len(sec); n < minSecretBytes {
			where := flagName
			if len(secrets) > 1 {
				where = fmt.Sprintf("%s (secret %d of %d)", flagName, i+1, len(secrets))
			}
			if !o.edge.Insecure {
				return auth.KeySet{}, config.Usagef("%s: a secret of %d bytes is too short, give at least %d random bytes (openssl rand -base64 32): a short one can be guessed offline from any token", where, n, minSecretBytes)
			}
			log.Warn("weak JWT secret: tokens signed with it can be forged after an offline guess; allowed only because of --insecure",
				"flag", where, "bytes", n, "want", minSecretBytes)
		}
	}
	var pubs []crypto.PublicKey
	if o.jwtPublicKey != "" {
		b, err := config.ReadFileFlag("jwt-public-key", o.jwtPublicKey)
		if err != nil {
			return auth.KeySet{}, err
		}
		if pubs, err = auth.ParsePublicKeys(b); err != nil {
			return auth.KeySet{}, config.Usagef("--jwt-public-key %s: %w", o.jwtPublicKey, err)
		}
	}
	set, err := auth.NewKeySet(secrets, pubs)
	if err != nil {
		return auth.KeySet{}, config.Usagef("--jwt-public-key %s: %w", o.jwtPublicKey, err)
	}
	return set, nil
}

// checkJWKS checks --jwt-jwks-url and its intervals. Plain http:// is
// accepted (an identity provider inside the cluster) but warned about at
// start: whoever can change the answer can mint tokens.
func (o *options) checkJWKS() error {
	j := &o.jwks
	if err := config.First(
		config.Positive("jwt-jwks-refresh", j.Refresh),
		config.Positive("jwt-jwks-min-refresh", j.MinRefresh),
	); err != nil {
		return err
	}
	if j.URL == "" {
		return nil
	}
	u, err := url.Parse(j.URL)
	switch {
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		return config.Usagef("--jwt-jwks-url %q: want the http(s):// URL of the identity provider's JWKS, such as https://id.example.com/.well-known/jwks.json", j.URL)
	case u.User != nil:
		// The URL is logged and exported in errors: no credentials in it.
		return config.Usagef("--jwt-jwks-url: no user or password in the URL (a JWKS is public)")
	}
	return nil
}

// checkTLS checks that --tls-cert and --tls-key come together; loadTLS
// reads them.
func (o *options) checkTLS() error {
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return config.Usagef("give --tls-cert and --tls-key together (the certificate and its private key)")
	}
	return nil
}

// loadTLS reads the certificate and key: a pair that cannot serve is a
// usage error now, not a failed handshake for every client later.
func (o *options) loadTLS() error {
	if o.tlsCert == "" {
		return nil
	}
	for _, f := range [][2]string{{"tls-cert", o.tlsCert}, {"tls-key", o.tlsKey}} {
		if _, err := config.ReadFileFlag(f[0], f[1]); err != nil {
			return err
		}
	}
	cert, err := reload.LoadCertificate(o.tlsCert, o.tlsKey)
	if err != nil {
		return config.Usagef("--tls-cert/--tls-key: %w", err)
	}
	o.cert = cert
	o.edge.TLS = cert.TLSConfig()
	return nil
}

// startJWKS fetches the JWKS (when configured) and adds it to the keys;
// it refreshes until ctx ends.
func (o *options) startJWKS(ctx context.Context, log *slog.Logger) (*auth.JWKS, error) {
	if o.jwks.URL == "" {
		return nil, nil
	}
	if u, _ := url.Parse(o.jwks.URL); u.Scheme == "http" && !isLoopbackAddr(net.JoinHostPort(u.Hostname(), "0")) {
		log.Warn("JWKS fetched over plain http: whoever can alter the answer on the way can mint tokens; use https", "url", o.jwks.URL)
	}
	cfg := o.jwks
	cfg.Logger = log
	j, err := auth.NewJWKS(ctx, cfg)
	if err != nil {
		return nil, err
	}
	o.keys.SetJWKS(j)
	return j, nil
}

// startReload re-reads the key and certificate files when they change
// (every --reload-interval) and on SIGHUP, until ctx ends. It returns the
// watcher (for its metrics), or nil when no file is configured: then
// SIGHUP keeps its default meaning.
func (o *options) startReload(ctx context.Context, log *slog.Logger) *reload.Watcher {
	var targets []reload.Target
	if files := nonEmpty(o.jwtSecretFile, o.jwtPublicKey); len(files) > 0 {
		targets = append(targets, reload.Target{Name: "jwt_keys", Files: files, Load: func() error {
			set, err := o.readKeys(log)
			if err != nil {
				return err
			}
			o.keys.Set(set)
			return nil
		}})
	}
	if o.cert != nil {
		targets = append(targets, reload.Target{Name: "tls_cert", Files: o.cert.Files(), Load: o.cert.Reload})
	}
	if len(targets) == 0 {
		return nil
	}
	w := reload.NewWatcher(o.reloadEvery, log, targets...)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		w.Run(ctx, hup)
	}()
	return w
}

func nonEmpty(s ...string) []string {
	var out []string
	for _, v := range s {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

// checkExposure refuses, as a usage error, to put an insecure edge (anyone
// may connect as anyone) or the dev mesh's NATS server (no authentication
// at all) on an address other machines can reach, unless the operator said
// so with --insecure-listen-any. dev: the NATS server is embedded, and
// without JWT keys the edge will be insecure.
func (o *options) checkExposure(dev bool) error {
	if o.listenAny {
		return nil
	}
	insecure := o.edge.Insecure || dev && !o.edge.Auth.Enabled()
	if insecure && !isLoopbackAddr(o.edge.Listen) {
		return config.Usagef("--listen %s is reachable from other machines and this edge accepts any ?user= without a token: listen on 127.0.0.1, set --jwt-secret/--jwt-public-key, or pass --insecure-listen-any", o.edge.Listen)
	}
	if dev && !isLoopbackAddr(o.natsListen) {
		return config.Usagef("--nats-listen %s is reachable from other machines and the dev mesh's NATS server has no authentication: listen on 127.0.0.1, use --nats with a real cluster, or pass --insecure-listen-any", o.natsListen)
	}
	return nil
}

// isLoopbackAddr reports whether a listen address (host:port) binds only
// this machine; an empty host binds every interface.
func isLoopbackAddr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// dialAddr is a listen address as clients on this machine reach it: the
// banner's URLs must work when pasted, also for ":8080" or "0.0.0.0:8080".
func dialAddr(hostport string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	if a, err := netip.ParseAddr(host); host == "" || err == nil && a.IsUnspecified() {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return hostport
}

// devMode sets the mode of the dev mesh's edge: without JWT keys it can
// only be insecure (?user=). The banner tells the result.
func (o *options) devMode() {
	if !o.edge.Auth.Enabled() {
		o.edge.Insecure = true
	}
}

// startEmbedded runs the dev-mode NATS server, connects in-process and
// writes the banner to w.
func (o *options) startEmbedded(log *slog.Logger, w io.Writer) (*nats.Conn, *server.Server, error) {
	o.devMode()
	store := filepath.Join(o.data, "nats")
	srv, err := natsrun.Start(natsrun.Options{Listen: o.natsListen, StoreDir: store, Name: "parley-dev"})
	if err != nil {
		return nil, nil, err
	}
	nc, err := o.nats.Connect("", log, nats.InProcessServer(srv))
	if err != nil {
		srv.Shutdown()
		return nil, nil, err
	}
	o.banner(w, store, srv.Addr().String())
	return nc, srv, nil
}

// banner tells the developer where the dev mesh is and how to connect.
// It says how this edge authenticates, which is not always insecure: JWT
// keys make even the dev mesh require tokens, and then ?user= gets 401.
// The client it suggests installs with one command where Node is (npx).
func (o *options) banner(w io.Writer, store, natsAddr string) {
	addr := dialAddr(o.edge.Listen)
	// With --tls-cert the listener speaks only TLS: a ws:// URL would fail.
	wsScheme, httpScheme := "ws", "http"
	if o.edge.TLS != nil {
		wsScheme, httpScheme = "wss", "https"
	}
	base := wsScheme + "://" + addr
	ws := fmt.Sprintf("%s/ws?user=alice      (insecure dev mode: any ?user= is accepted; browser pages: this machine's, or --allowed-origins)", base)
	try := fmt.Sprintf("npx --yes wscat -c '%s/ws?user=alice'", base)
	switch {
	case o.edge.Insecure && o.edge.Auth.Enabled():
		ws = fmt.Sprintf("%s/ws?user=alice      (insecure: any ?user= is accepted, and JWTs signed with the configured key)", base)
	case !o.edge.Insecure:
		ws = fmt.Sprintf("%s/ws?token=<JWT>     (JWT signed with the configured key required; ?user= is refused)", base)
		try = fmt.Sprintf("npx --yes wscat -H 'Authorization: Bearer <JWT>' -c '%s/ws'", base)
	}
	fmt.Fprintf(w, `
Parley dev mesh (embedded NATS with JetStream, data in %s)
  WebSocket:  %s
  NATS:       nats://%s               (backend services: publish to chat.room.<room>)
  Metrics:    %s://%s/metrics
%sTry:  %s   then send {"id":1,"op":"sub","room":"lobby"}

`, store, ws, natsAddr, httpScheme, addr, o.pageLine(httpScheme+"://"+addr), try)
}
