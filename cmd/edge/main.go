// Command edge is Parley's WebSocket edge. With no flags it is the whole mesh
// on a laptop: an embedded NATS server with JetStream, the edge in insecure
// dev mode, NATS exposed on 127.0.0.1:4222 for backend services.
//
//	edge [flags]            serve
//	edge provision [flags]  create or update the JetStream resources and exit
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/natsrun"
	"github.com/parley-mesh/parley/internal/protocol"
	pjs "github.com/parley-mesh/parley/jetstream"
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
}

func parse(args []string, getenv func(string) string) (*options, error) {
	o := &options{edge: edge.DefaultConfig()}
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	c := &o.edge
	fs.StringVar(&c.Listen, "listen", c.Listen, "HTTP address for /ws, /metrics, /healthz, /readyz")
	o.nats.Register(fs)
	fs.StringVar(&o.natsListen, "nats-listen", "127.0.0.1:4222", "client address of the embedded NATS server (dev mode)")
	fs.StringVar(&o.data, "data", "./data", "data directory of the embedded NATS server (dev mode)")
	fs.BoolVar(&c.Insecure, "insecure", false, "accept ?user=NAME without a token (implied in dev mode without JWT keys)")
	fs.StringVar(&o.jwtSecret, "jwt-secret", "", "HS256/384/512 shared secret")
	fs.StringVar(&o.jwtSecretFile, "jwt-secret-file", "", "file holding the HS256 shared secret")
	fs.StringVar(&o.jwtPublicKey, "jwt-public-key", "", "PEM file with the RS256/PS256/ES256/EdDSA public key (or certificate)")
	fs.StringVar(&c.Auth.Issuer, "jwt-issuer", "", "required iss claim")
	fs.StringVar(&c.Auth.Audience, "jwt-audience", "", "required aud claim")
	fs.DurationVar(&c.Auth.Leeway, "jwt-leeway", 5*time.Second, "clock skew allowed on exp/nbf")
	fs.StringVar(&o.origins, "allowed-origins", "", "comma-separated browser origins allowed to connect, * for any (default: same host)")

	fs.IntVar(&c.Stream.Replicas, "stream-replicas", c.Stream.Replicas, "chat stream replicas (3 in production clusters)")
	fs.DurationVar(&c.Stream.Duplicates, "stream-duplicates", c.Stream.Duplicates, "dedup window for msg_id / Nats-Msg-Id")
	fs.DurationVar(&c.Stream.MaxAge, "stream-max-age", c.Stream.MaxAge, "drop messages older than this (0: keep)")
	fs.Int64Var(&c.Stream.MaxBytes, "stream-max-bytes", c.Stream.MaxBytes, "chat stream size bound (0: none)")
	fs.Int64Var(&c.Stream.MaxMsgsPerSubject, "stream-max-msgs-per-subject", c.Stream.MaxMsgsPerSubject, "messages kept per room/user (0: no limit)")

	fs.BoolVar(&c.ReusePort, "reuse-port", false, "set SO_REUSEPORT so several edge processes share --listen")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go profiles at /debug/pprof/ (do not expose publicly)")
	fs.IntVar(&c.MaxConnections, "max-connections", 0, "refuse connections beyond this many (0: unlimited)")
	fs.IntVar(&c.MaxRecover, "max-recover", c.MaxRecover, "messages replayed by one sub with since or last (and at most half of --max-queued-bytes)")
	fs.IntVar(&c.MaxHistory, "max-history", c.MaxHistory, "messages in one history reply")
	fs.IntVar(&c.MaxHistoryBytes, "max-history-bytes", c.MaxHistoryBytes, "bytes of messages in one history reply")
	fs.IntVar(&c.RoomCache, "room-cache", c.RoomCache, "latest messages kept per room to serve resumes without reading the stream; a room stays subscribed 30s after its last subscriber for that (0: none)")
	fs.IntVar(&c.MaxFrameBytes, "max-frame-bytes", c.MaxFrameBytes, "larger client frames get too_large")
	fs.IntVar(&c.HardFrameLimit, "hard-frame-bytes", c.HardFrameLimit, "larger client frames close the connection (1009)")
	fs.IntVar(&c.MaxQueuedMsgs, "max-queued-msgs", c.MaxQueuedMsgs, "outbound queue per connection before a slow-consumer close")
	fs.IntVar(&c.MaxQueuedBytes, "max-queued-bytes", c.MaxQueuedBytes, "outbound bytes per connection before a slow-consumer close")
	fs.IntVar(&c.MaxSubscriptions, "max-subscriptions", c.MaxSubscriptions, "rooms per connection")
	fs.Float64Var(&c.RequestRate, "request-rate", c.RequestRate, "requests per second per connection")
	fs.IntVar(&c.RequestBurst, "request-burst", c.RequestBurst, "request burst per connection")
	fs.Float64Var(&c.PublishRate, "publish-rate", c.PublishRate, "publishes per second per connection")
	fs.IntVar(&c.PublishBurst, "publish-burst", c.PublishBurst, "publish burst per connection")
	fs.IntVar(&c.MaxInflightPublishes, "max-inflight-publishes", c.MaxInflightPublishes, "unacked publishes per connection")
	fs.DurationVar(&c.PingInterval, "ping-interval", c.PingInterval, "WebSocket ping period")
	fs.DurationVar(&c.ReadTimeout, "read-timeout", c.ReadTimeout, "close a connection silent for this long")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "close a connection whose write blocks this long")
	fs.DurationVar(&c.WriteDelay, "write-delay", 0, "collect pushes this long before each write: fewer syscalls at high fan-out, that much more latency")
	fs.DurationVar(&c.PublishTimeout, "publish-timeout", c.PublishTimeout, "wait this long for a JetStream ack before answering unavailable")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "grace period of a SIGTERM drain")
	fs.StringVar(&c.Presence.EdgeID, "edge-id", "", "this edge's name in presence events, unique among live edges, e.g. the pod name (default: edge-<random>)")
	fs.DurationVar(&c.Presence.Heartbeat, "presence-heartbeat", 2*time.Second, "how often the edge tells presence workers it is alive (keep well under their --edge-timeout)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "json", "json or text")
	if err := config.Parse(fs, args, getenv); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if id := c.Presence.EdgeID; id != "" && !protocol.ValidName(id) {
		return nil, fmt.Errorf("--edge-id %q: use 1-%d characters of [A-Za-z0-9_-]", id, protocol.MaxNameLen)
	}
	return o, nil
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	provisionOnly := len(args) > 0 && args[0] == "provision"
	if provisionOnly {
		args = args[1:]
	}
	o, err := parse(args, getenv)
	if err != nil {
		return err
	}
	log, err := config.NewLogger(o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	o.edge.Logger = log
	if err := o.loadAuth(); err != nil {
		return err
	}
	if o.origins != "" {
		o.edge.AllowedOrigins = strings.Split(o.origins, ",")
	}
	o.nats.Name = "parley-edge"

	var nc *nats.Conn
	if o.nats.URLs == "" {
		if provisionOnly {
			return errors.New("provision needs --nats (the embedded server provisions itself at start)")
		}
		var srv interface{ Shutdown() }
		nc, srv, err = o.startEmbedded(log)
		if err == nil {
			defer srv.Shutdown()                  // after the edge drained: JetStream flushes its files
			defer startDevPresence(srv, o, log)() // starts now, stops after the edge drained
			defer startDevArchiver(srv, o, log)()
		}
	} else {
		// provision serves no client, so it needs no JWT key.
		if !provisionOnly && !o.edge.Auth.Enabled() && !o.edge.Insecure {
			return fmt.Errorf("%w: set --jwt-secret/--jwt-public-key, or --insecure to accept ?user= (never in production)", edge.ErrNoAuth)
		}
		nc, err = o.nats.Connect(o.nats.URLs, log)
	}
	if err != nil {
		return err
	}
	defer nc.Close()

	if provisionOnly {
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		if _, err := pjs.Provision(ctx, js, o.edge.Stream); err != nil {
			return err
		}
		log.Info("provisioned", "stream", pjs.ChatStream)
		return nil
	}
	if o.edge.Insecure {
		log.Warn("INSECURE MODE: any client can connect as any user with ?user=NAME; never expose this edge")
	}
	e, err := edge.New(o.edge, nc)
	if err != nil {
		return err
	}
	return e.Run(ctx)
}

func (o *options) loadAuth() error {
	a := &o.edge.Auth
	switch {
	case o.jwtSecret != "" && o.jwtSecretFile != "":
		return errors.New("give --jwt-secret or --jwt-secret-file, not both")
	case o.jwtSecret != "":
		a.HMACSecret = []byte(o.jwtSecret)
	case o.jwtSecretFile != "":
		b, err := config.ReadFileFlag("jwt-secret-file", o.jwtSecretFile)
		if err != nil {
			return err
		}
		a.HMACSecret = []byte(strings.TrimSpace(string(b)))
	}
	if o.jwtPublicKey != "" {
		b, err := config.ReadFileFlag("jwt-public-key", o.jwtPublicKey)
		if err != nil {
			return err
		}
		a.PublicKeyPEM = b
	}
	return nil
}

// startEmbedded runs the dev-mode NATS server and connects in-process.
func (o *options) startEmbedded(log *slog.Logger) (*nats.Conn, *server.Server, error) {
	if !o.edge.Auth.Enabled() {
		o.edge.Insecure = true
	}
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
	fmt.Fprintf(os.Stderr, `
Parley dev mesh (embedded NATS with JetStream, data in %s)
  WebSocket:  ws://%s/ws?user=alice      (insecure dev mode: any ?user= is accepted)
  NATS:       nats://%s               (backend services: publish to chat.room.<room>)
  Metrics:    http://%s/metrics
Try:  websocat 'ws://%s/ws?user=alice'   then send {"id":1,"op":"sub","room":"lobby"}

`, store, o.edge.Listen, srv.Addr().String(), o.edge.Listen, o.edge.Listen)
	return nc, srv, nil
}
