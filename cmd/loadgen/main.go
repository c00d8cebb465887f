// Command loadgen measures Parley edges: connections held (with the connect
// rate and each server process's RSS growth per connection), fan-out, a
// saturation ramp, chat-like publish/subscribe, acked publish throughput and
// mass reconnects, from several worker processes (it starts them itself)
// over several loopback source addresses. It stops by itself after
// --duration (saturate: after at most --max-steps steps).
//
//	go run ./cmd/loadgen --scenario fanout --conns 10000 --rooms 1 --msg-rate 100 \
//	    --url ws://127.0.0.1:8080/ws --nats nats://127.0.0.1:4222
//
// --target centrifugo or nats measures a peer instead, with the same client
// code (idle, fanout and saturate): Centrifugo's client protocol v2 JSON,
// published to through its HTTP API, or nats-server's WebSocket listener,
// published to with nats.go:
//
//	go run ./cmd/loadgen --target centrifugo --scenario idle --conns 15000 --rate 0 \
//	    --jwt-secret "$SECRET"
//	go run ./cmd/loadgen --target nats --scenario saturate --conns 1000 --rooms 1 \
//	    --url ws://127.0.0.1:8082 --nats nats://127.0.0.1:4223
//
// "loadgen floor" measures the machine instead: loopback writes per second
// with no server code at all, the bound under every fan-out figure.
//
//	go run ./cmd/loadgen floor --pairs 5000 --writers 1 --duration 5s
//
// "loadgen chaos" checks the delivery guarantees under faults instead, on a
// mesh it starts itself (see docs/guarantees.md).
//
//	go run ./cmd/loadgen chaos --trials 1000
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		if err := loadgen.RunWorker(ctx, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen worker:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "chaos" {
		if err := chaos(ctx, os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen chaos:", err)
			os.Exit(exitCode(err))
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "floor" {
		if err := floor(ctx, os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen floor:", err)
			os.Exit(exitCode(err))
		}
		return
	}
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(exitCode(err))
	}
}

// exitCode is 2 for a command line that cannot work (a bad flag value, as
// the other binaries do), 0 for -h, else 1.
func exitCode(err error) int {
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, config.ErrUsage), errors.Is(err, errFlagSyntax):
		return 2
	}
	return 1
}

// errFlagSyntax marks an error of the flag package (an unknown flag, a
// value that does not parse); it has printed the usage already.
var errFlagSyntax = errors.New("bad flags")

// parseFlags parses args into fs, marking syntax errors for exitCode.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errFlagSyntax, err)
	}
	if fs.NArg() > 0 {
		return config.Usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// wsURLs checks a comma-separated list of edge WebSocket URLs.
func wsURLs(name, urls string) error {
	for _, u := range strings.Split(urls, ",") {
		p, err := url.Parse(strings.TrimSpace(u))
		if err != nil || (p.Scheme != "ws" && p.Scheme != "wss") || p.Host == "" {
			return config.Usagef("--%s %q: want ws://host:port/ws (or wss://), comma-separated", name, u)
		}
	}
	return nil
}

func run(ctx context.Context, args []string) error {
	var s loadgen.Spec
	var urls, procs, jsonOut string
	var p99Limit time.Duration
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage:
  loadgen [flags]        drive edges with one scenario from worker processes, then report
                         latency percentiles, losses, duplicates and the servers' RSS and CPU
  loadgen floor [flags]  measure this machine's loopback write rate instead (loadgen floor --help)
  loadgen chaos [flags]  check the delivery guarantees under faults, on a mesh it starts itself
                         (loadgen chaos --help)

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&s.Scenario, "scenario", "idle", "idle, fanout, saturate, pubsub, publish, reconnect or nats-publish (the plain-NATS ceiling of publish)")
	fs.StringVar(&s.Target, "target", loadgen.TargetParley, "what to measure: parley, centrifugo or nats (nats-server's WebSocket listener); the peers take idle, fanout and saturate")
	fs.StringVar(&urls, "url", "", "WebSocket URL(s), comma-separated (default by --target: ws://127.0.0.1:8080/ws, ws://127.0.0.1:8000/connection/websocket, ws://127.0.0.1:8082)")
	fs.StringVar(&s.NATS, "nats", "nats://127.0.0.1:4222", "NATS URL of the backend publisher (parley: fanout, saturate, reconnect, nats-publish; nats: fanout, saturate)")
	fs.IntVar(&s.Conns, "conns", 1000, "connections in all")
	fs.IntVar(&s.Workers, "workers", 2, "worker processes (each holds conns/workers sockets; keep it under ~19,000)")
	fs.Float64Var(&s.Rate, "rate", 2000, "connections opened per second; 0: as fast as the server takes them, --dial-concurrency at a time (idle, fanout, saturate)")
	fs.IntVar(&s.DialConcurrency, "dial-concurrency", 0, "handshakes in flight at most, all workers together (default 64 with --rate 0, else 256 per worker)")
	fs.StringVar(&s.JWTSecret, "jwt-secret", "", "mint a token per user, HS256 with this secret (Centrifugo's token HMAC secret, or a Parley edge's)")
	fs.StringVar(&s.CentrifugoAPI, "centrifugo-api", "http://127.0.0.1:8000", "centrifugo: its HTTP API, the backend publisher (fanout, saturate)")
	fs.StringVar(&s.CentrifugoAPIKey, "centrifugo-api-key", "", "centrifugo: the HTTP API's key (sent as X-API-Key)")
	fs.Float64Var(&s.StartRate, "start-rate", 100, "saturate: offered msg/s of the first step, all rooms together")
	fs.Float64Var(&s.StepFactor, "step-factor", 1.25, "saturate: each step offers this many times the one before")
	fs.Float64Var(&s.StepAdd, "step-add", 0, "saturate: each step offers this many msg/s more instead (when above 0)")
	fs.DurationVar(&s.StepDuration, "step-duration", 10*time.Second, "saturate: how long each step publishes")
	fs.IntVar(&s.MaxSteps, "max-steps", 20, "saturate: steps at most (1-100)")
	fs.DurationVar(&p99Limit, "p99-limit", 50*time.Millisecond, "saturate: a step holds while its p99 latency is at most this (and nothing is lost)")
	fs.DurationVar(&s.Grace, "grace", 2*time.Second, "idle, fanout, saturate: how long after publishing stops deliveries may still arrive (0: 2s)")
	fs.IntVar(&s.Rooms, "rooms", 100, "rooms; connection i is in room i % rooms")
	fs.Float64Var(&s.MsgRate, "msg-rate", 1, "fanout/reconnect: backend msg/s per room; pubsub: msg/s per client")
	fs.IntVar(&s.Payload, "payload", 64, "padding bytes per message")
	fs.DurationVar(&s.Duration, "duration", 30*time.Second, "measured phase (after all connections are up)")
	fs.IntVar(&s.Sources, "sources", 8, "source addresses 127.0.0.2 … to spread connections over")
	fs.IntVar(&s.Window, "window", 8, "publish: publishes in flight per connection")
	fs.IntVar(&s.Backlog, "backlog", 0, "reconnect: messages each worker stores in each of its rooms while its connections are away (a long resume of that many)")
	fs.DurationVar(&s.Ramp, "ramp-timeout", 0, "give up connecting after this long (default: twice conns/rate + 30s)")
	fs.StringVar(&s.Token, "token", "", "JWT for every connection (default: ?user=, for insecure edges)")
	fs.StringVar(&procs, "procs", "", "process names (/proc comm) whose RSS and CPU are sampled (default by --target: edge,nats-server; centrifugo; nats-server)")
	fs.DurationVar(&s.Progress, "progress", 5*time.Second, "progress line period")
	fs.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	s.P99Limit = p99Limit
	if urls == "" {
		urls = loadgen.DefaultURL(s.Target)
	}
	if err := config.First(
		target(s.Target, s.Scenario),
		wsURLs("url", urls),
		config.NATSURLs("nats", s.NATS),
		config.Positive("conns", s.Conns),
		config.Positive("workers", s.Workers),
		config.NotNegative("rate", s.Rate, "unpaced"),
		config.NotNegative("dial-concurrency", s.DialConcurrency, "64 with --rate 0, else 256 per worker"),
		config.Positive("rooms", s.Rooms),
		config.NotNegative("msg-rate", s.MsgRate, "none"),
		config.NotNegative("payload", s.Payload, "none"),
		config.Positive("duration", s.Duration),
		config.InRange("sources", s.Sources, 1, 250),
		config.Positive("window", s.Window),
		config.NotNegative("backlog", s.Backlog, "none"),
		config.NotNegative("ramp-timeout", s.Ramp, "twice conns/rate + 30s"),
		config.Positive("progress", s.Progress),
		config.Positive("start-rate", s.StartRate),
		config.NotNegative("step-add", s.StepAdd, "multiply by --step-factor"),
		stepFactor(s.StepFactor, s.StepAdd),
		config.Positive("step-duration", s.StepDuration),
		config.InRange("max-steps", s.MaxSteps, 1, 100),
		config.Positive("p99-limit", s.P99Limit),
		config.NotNegative("grace", s.Grace, "2s"),
		httpURL("centrifugo-api", s.CentrifugoAPI),
	); err != nil {
		return err
	}
	if s.Rate == 0 && s.Scenario != loadgen.Idle && s.Scenario != loadgen.Fanout && s.Scenario != loadgen.Saturate {
		return config.Usagef("--rate 0 (unpaced) is for --scenario idle, fanout or saturate")
	}
	if s.Backlog > 0 && s.Scenario != loadgen.Reconnect {
		return config.Usagef("--backlog is for --scenario reconnect")
	}
	s.URLs = strings.Split(urls, ",")
	if procs != "" {
		s.Procs = strings.Split(procs, ",")
	} else {
		s.Procs = loadgen.DefaultProcs(s.Target)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	res, err := loadgen.Run(ctx, s, exe, os.Stderr)
	if err != nil {
		return err
	}
	res.Print(os.Stdout)
	if jsonOut != "" {
		if err := writeJSON(jsonOut, res); err != nil {
			return err
		}
	}
	if res.Undelivered > 0 || res.Counts.Dups > 0 || res.Counts.Disorder > 0 { // saturate: its last step's are how it stops
		return errors.New("messages undelivered, duplicated or out of order")
	}
	return nil
}

// target checks --target, and that the scenario is one the target takes.
func target(t, scenario string) error {
	switch t {
	case loadgen.TargetParley:
		return nil
	case loadgen.TargetCentrifugo, loadgen.TargetNATS:
		switch scenario {
		case loadgen.Idle, loadgen.Fanout, loadgen.Saturate:
			return nil
		}
		return config.Usagef("--target %s takes --scenario idle, fanout or saturate (%s measures Parley only)", t, scenario)
	}
	return config.Usagef("--target %q: want parley, centrifugo or nats", t)
}

// stepFactor checks --step-factor: above 1, unless --step-add is used.
func stepFactor(f, add float64) error {
	if add > 0 {
		return nil
	}
	if !(f > 1) || f > 100 {
		return config.Usagef("--step-factor %v: want a factor above 1 (at most 100), or a positive --step-add", f)
	}
	return nil
}

// httpURL checks an http(s)://host:port URL.
func httpURL(name, u string) error {
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return config.Usagef("--%s %q: want http://host:port", name, u)
	}
	return nil
}

// floor measures the machine's loopback write rate (see loadgen.Floor).
func floor(ctx context.Context, args []string) error {
	var s loadgen.FloorSpec
	var jsonOut string
	fs := flag.NewFlagSet("loadgen floor", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage:
  loadgen floor [flags]  loopback writes per second with no server code at all: the bound
                         under every fan-out figure on this machine

Flags:
`)
		fs.PrintDefaults()
	}
	fs.IntVar(&s.Pairs, "pairs", 5000, "loopback connections, two file descriptors each (keep 2×pairs under the open-file limit)")
	fs.IntVar(&s.Writers, "writers", 1, "writer threads, each writing to its share of the connections in turn")
	fs.IntVar(&s.Bytes, "bytes", 150, "bytes per write (about one pushed message)")
	fs.DurationVar(&s.Duration, "duration", 5*time.Second, "how long to write")
	fs.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := config.First(
		config.Positive("pairs", s.Pairs),
		config.Positive("writers", s.Writers),
		config.Positive("bytes", s.Bytes),
		config.Positive("duration", s.Duration),
	); err != nil {
		return err
	}
	res, err := loadgen.Floor(ctx, s)
	if err != nil {
		return err
	}
	res.Print(os.Stdout)
	if jsonOut != "" {
		return writeJSON(jsonOut, res)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
