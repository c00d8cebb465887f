//go:build unix

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/parley-mesh/parley/internal/chaostest"
	"github.com/parley-mesh/parley/internal/config"
)

// chaos runs fault trials against a mesh it starts itself (3 nats-server
// processes with the R3 chat stream, edges) and stops after --trials:
//
//	go run ./cmd/loadgen chaos --trials 1000
//
// It prints one line per trial and the table docs/guarantees.md shows, and
// exits non-zero if any trial broke a promise.
func chaos(ctx context.Context, args []string) error {
	var (
		cfg              chaostest.Config
		faults, dir      string
		natsBin, edgeBin string
		seed             uint64
		race, syncAlways bool
		edges            int
		stopAfter        time.Duration
	)
	fs := flag.NewFlagSet("loadgen chaos", flag.ContinueOnError)
	fs.IntVar(&cfg.Trials, "trials", 100, "trials to run (one fault each)")
	fs.StringVar(&faults, "faults", "", "comma-separated fault kinds (default all: "+kinds()+")")
	fs.Uint64Var(&seed, "seed", 0, "schedule seed (0: random; printed at the start)")
	fs.StringVar(&dir, "dir", "", "keep data and process logs here (default: a temporary directory, removed)")
	fs.StringVar(&natsBin, "nats-server", "", "nats-server binary (default: built from the module cache)")
	fs.StringVar(&edgeBin, "edge", "", "edge binary (default: built from ./cmd/edge)")
	fs.BoolVar(&race, "race", false, "build nats-server and the edge with the race detector")
	fs.BoolVar(&syncAlways, "sync-always", false, "run JetStream with sync_interval: always (fsync every write)")
	fs.IntVar(&edges, "edges", 3, "edges")
	fs.DurationVar(&cfg.PublishFor, "publish-for", 3*time.Second, "publishing time per trial (it goes on until the fault is undone)")
	fs.DurationVar(&stopAfter, "max-duration", 0, "stop starting trials after this long (0: run all --trials)")
	var bench chaostest.BenchConfig
	fs.DurationVar(&bench.Duration, "bench", 0, "instead of trials: measure acked publishes/s for this long on a fault-free mesh")
	fs.IntVar(&bench.Conns, "bench-conns", 24, "bench: connections, spread over the edges")
	fs.IntVar(&bench.Window, "bench-window", 16, "bench: publishes in flight per connection")
	fs.IntVar(&bench.Payload, "bench-payload", 64, "bench: padding bytes per message")
	verbose := fs.Bool("v", false, "log the harness's steps")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := config.First(
		config.Positive("trials", cfg.Trials),
		config.InRange("edges", edges, 1, 16),
		config.Positive("publish-for", cfg.PublishFor),
		config.NotNegative("max-duration", stopAfter, "run all --trials"),
		config.NotNegative("bench", bench.Duration, "no bench: trials"),
		config.Positive("bench-conns", bench.Conns),
		config.Positive("bench-window", bench.Window),
		config.NotNegative("bench-payload", bench.Payload, "none"),
	); err != nil {
		return err
	}
	if faults != "" {
		for _, name := range strings.Split(faults, ",") {
			k, err := chaostest.ParseFault(strings.TrimSpace(name))
			if err != nil {
				return config.Usagef("--faults: %w", err)
			}
			cfg.Faults = append(cfg.Faults, k)
		}
	}
	cfg.Seed = seed
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg.Out, cfg.Log = os.Stdout, log
	if dir == "" {
		tmp, err := os.MkdirTemp("", "parley-chaos-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if stopAfter > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, stopAfter)
		defer cancel()
	}
	began := time.Now()
	bin := chaostest.Binaries{NATS: natsBin, Edge: edgeBin}
	if bin.NATS == "" || bin.Edge == "" {
		built, err := chaostest.Build(ctx, dir, race)
		if err != nil {
			return err
		}
		if bin.NATS == "" {
			bin.NATS = built.NATS
		}
		if bin.Edge == "" {
			bin.Edge = built.Edge
		}
	}
	mc := chaostest.MeshConfig{Dir: dir, Bin: bin, Edges: edges, SyncAlways: syncAlways, Log: log}
	if bench.Duration > 0 {
		return runBench(ctx, mc, bench)
	}
	sum, err := chaostest.Run(ctx, dir, bin, mc, cfg)
	if sum != nil {
		fmt.Printf("\n%d trials in %v\n\n%s", len(sum.Results), time.Since(began).Round(time.Second), sum.Table())
		if s := sum.ErrorSamples(); s != "" {
			fmt.Printf("\npublish errors, first message of each code:\n%s", s)
		}
	}
	if sum == nil || err != nil && !(stopAfter > 0 && errors.Is(err, context.DeadlineExceeded)) {
		return err
	}
	if n := sum.Failed(); n > 0 {
		return fmt.Errorf("%d of %d trials broke a promise", n, len(sum.Results))
	}
	return nil
}

func kinds() string {
	var s []string
	for _, k := range chaostest.AllFaults() {
		s = append(s, string(k))
	}
	return strings.Join(s, ",")
}

// runBench measures acked publishes per second through the edges on a
// fault-free R3 mesh (lazy fsync, or every write with --sync-always).
func runBench(ctx context.Context, mc chaostest.MeshConfig, cfg chaostest.BenchConfig) error {
	mc.EdgeArgs = append(mc.EdgeArgs, chaostest.BenchEdgeArgs()...)
	m, err := chaostest.StartMesh(ctx, mc)
	if err != nil {
		return err
	}
	defer m.Close()
	res, err := chaostest.Bench(ctx, m, cfg)
	if err != nil {
		return err
	}
	sync := "default (lazy fsync)"
	if mc.SyncAlways {
		sync = "always"
	}
	fmt.Printf("sync_interval %s: %d acked publishes in %v = %.0f/s (%d conns × %d in flight, %d B padding), errors %v\n",
		sync, res.Acked, res.Duration, res.PerSecond(), cfg.Conns, cfg.Window, cfg.Payload, res.Errors)
	return nil
}
