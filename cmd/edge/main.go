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
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/natsrun"
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
	logLevel      string
	logFormat     string

	// hosts and proxies are --allowed-hosts and --trusted-proxies as given.
	hosts   string
	proxies string
	// listenAny lets an insecure edge, or the dev mesh's unauthenticated
	// NATS server, listen beyond loopback (--insecure-listen-any).
	listenAny bool
}

// edgeSynopsis and provisionSynopsis open --help.
const (
	edgeSynopsis = `Usage:
  edge [flags]            serve WebSocket clients at /ws. Without --nats it is the whole dev
                          mesh on this machine: embedded NATS with JetStream (data in --data),
                          presence and archiver in-process, insecure ?user= mode without JWT keys
  edge provision [flags]  create or update the chat stream PARLEY_CHAT and exit, for a one-shot
                          job (the edge also does it at every start); edge provision --help`
	provisionSynopsis = `Usage:
  edge provision --nats URL [flags]
      create or update the chat stream PARLEY_CHAT with the --stream-* settings below and
      exit (0 when done). The edge does the same at every start; this is for a one-shot job
      (the Helm chart's provision hook). It serves no client, so it takes no JWT flags.`
)

// parse reads the command line and the environment and checks every flag.
// provision parses the provision subcommand's flags: NATS, stream, logging.
func parse(args []string, getenv func(string) string, provision bool) (*options, error) {
	o := &options{edge: edge.DefaultConfig()}
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
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "json", "json or text")
	if err := fs.Parse(args, getenv); err != nil {
		return nil, err
	}
	if provision && o.nats.URLs == "" {
		return nil, config.Usagef("provision needs --nats (the dev mesh's embedded server provisions itself at start)")
	}
	if err := config.First(
		o.nats.Check(),
		checkStream(c.Stream),
		checkLog(o.logLevel, o.logFormat),
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
	fs.StringVar(&o.jwtSecretFile, "jwt-secret-file", "", "file holding the HS256/384/512 shared secret (surrounding whitespace is trimmed)")
	fs.StringVar(&o.jwtPublicKey, "jwt-public-key", "", "PEM file with the RS256/PS256/ES256/EdDSA public key (or certificate); with a secret too, tokens signed with either are accepted")
	fs.StringVar(&c.Auth.Issuer, "jwt-issuer", "", "required iss claim")
	fs.StringVar(&c.Auth.Audience, "jwt-audience", "", "required aud claim")
	fs.DurationVar(&c.Auth.Leeway, "jwt-leeway", 5*time.Second, "clock skew allowed on exp/nbf")
	fs.StringVar(&o.origins, "allowed-origins", "", "comma-separated browser origins (scheme://host[:port], not null) allowed to connect, * for any (default: same host; insecure mode: pages on this machine, any port)")
	fs.StringVar(&o.hosts, "allowed-hosts", "", "insecure mode: comma-separated Host names served besides localhost and IP addresses, * for any (default: none, against DNS rebinding)")
	fs.BoolVar(&o.listenAny, "insecure-listen-any", false, "let an insecure edge (and the dev mesh's NATS, which has no authentication) listen on a non-loopback address")

	fs.BoolVar(&c.ReusePort, "reuse-port", false, "set SO_REUSEPORT so several edge processes share --listen")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go profiles at /debug/pprof/ (do not expose publicly)")
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

// checkLog checks --log-level and --log-format with the logger's own rules.
func checkLog(level, format string) error {
	_, err := config.NewLogger(level, format)
	return err
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
	provisionOnly := len(args) > 0 && args[0] == "provision"
	if provisionOnly {
		args = args[1:]
	}
	o, err := parse(args, getenv, provisionOnly)
	if err != nil {
		return err
	}
	log, err := config.NewLogger(o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	o.edge.Logger = log
	o.nats.Name = "parley-edge"
	if provisionOnly {
		return provision(ctx, o, log)
	}
	if err := o.loadAuth(log); err != nil {
		return err
	}
	if err := o.checkExposure(o.nats.URLs == ""); err != nil {
		return err
	}
	if o.nats.URLs != "" && !o.edge.Auth.Enabled() && !o.edge.Insecure {
		return config.Usagef("%w: set --jwt-secret/--jwt-public-key, or --insecure to accept ?user= (never in production)", edge.ErrNoAuth)
	}

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
	e, err := edge.New(o.edge, nc)
	if err != nil {
		return err
	}
	return e.Run(ctx)
}

// provision is `edge provision`: the chat stream, then exit. It serves no
// client, so it needs no JWT key.
func provision(ctx context.Context, o *options, log *slog.Logger) error {
	nc, err := o.nats.Connect(o.nats.URLs, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if _, err := pjs.Provision(ctx, js, o.edge.Stream); err != nil {
		return err
	}
	log.Info("provisioned", "stream", pjs.ChatStream)
	return nil
}

// minSecretBytes is RFC 7518's floor for an HS256 key (3.2: a key of the
// hash's size, 256 bits). A shorter secret can be brute-forced offline from
// any one token a client holds.
const minSecretBytes = 32

// loadAuth reads the JWT key flags into the edge's auth config and checks
// them now, so a bad key file is a usage error naming its flag rather than
// a failure later in edge.New.
func (o *options) loadAuth(log *slog.Logger) error {
	a := &o.edge.Auth
	switch {
	case o.jwtSecret != "" && o.jwtSecretFile != "":
		return config.Usagef("give --jwt-secret or --jwt-secret-file, not both")
	case o.jwtSecret != "":
		a.HMACSecret = []byte(o.jwtSecret)
	case o.jwtSecretFile != "":
		b, err := config.ReadFileFlag("jwt-secret-file", o.jwtSecretFile)
		if err != nil {
			return err
		}
		a.HMACSecret = []byte(strings.TrimSpace(string(b)))
		if len(a.HMACSecret) == 0 {
			return config.Usagef("--jwt-secret-file %s is empty", o.jwtSecretFile)
		}
	}
	if n := len(a.HMACSecret); n > 0 && n < minSecretBytes {
		flagName := "--jwt-secret"
		if o.jwtSecretFile != "" {
			flagName = "--jwt-secret-file"
		}
		if !o.edge.Insecure {
			return config.Usagef("%s: a secret of %d bytes is too short, give at least %d random bytes (openssl rand -base64 32): a short one can be guessed offline from any token", flagName, n, minSecretBytes)
		}
		log.Warn("weak JWT secret: tokens signed with it can be forged after an offline guess; allowed only because of --insecure",
			"flag", flagName, "bytes", n, "want", minSecretBytes)
	}
	if o.jwtPublicKey != "" {
		b, err := config.ReadFileFlag("jwt-public-key", o.jwtPublicKey)
		if err != nil {
			return err
		}
		a.PublicKeyPEM = b
	}
	if !a.Enabled() {
		return nil
	}
	v, err := auth.NewVerifier(*a)
	if err != nil {
		flagName := "--jwt-public-key"
		if a.Leeway < 0 {
			flagName = "--jwt-leeway"
		}
		return config.Usagef("%s: %w", flagName, err)
	}
	if len(a.HMACSecret) > 0 && len(a.PublicKeyPEM) > 0 {
		// Both is meant for moving from one to the other: say so, so a
		// forgotten secret does not stay a second way in.
		log.Warn("JWT secret and public key both configured: tokens signed with either are accepted; drop the one being retired",
			"algorithms", strings.Join(v.Algorithms(), ","))
	}
	return nil
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
	ws := fmt.Sprintf("ws://%s/ws?user=alice      (insecure dev mode: any ?user= is accepted; browser pages: this machine's, or --allowed-origins)", addr)
	try := fmt.Sprintf("npx --yes wscat -c 'ws://%s/ws?user=alice'", addr)
	switch {
	case o.edge.Insecure && o.edge.Auth.Enabled():
		ws = fmt.Sprintf("ws://%s/ws?user=alice      (insecure: any ?user= is accepted, and JWTs signed with the configured key)", addr)
	case !o.edge.Insecure:
		ws = fmt.Sprintf("ws://%s/ws?token=<JWT>     (JWT signed with the configured key required; ?user= is refused)", addr)
		try = fmt.Sprintf("npx --yes wscat -H 'Authorization: Bearer <JWT>' -c 'ws://%s/ws'", addr)
	}
	fmt.Fprintf(w, `
Parley dev mesh (embedded NATS with JetStream, data in %s)
  WebSocket:  %s
  NATS:       nats://%s               (backend services: publish to chat.room.<room>)
  Metrics:    http://%s/metrics
Try:  %s   then send {"id":1,"op":"sub","room":"lobby"}

`, store, ws, natsAddr, addr, try)
}
