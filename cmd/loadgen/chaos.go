//go:build unix

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
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
	var replay chaostest.ReplayBenchConfig
	var small, long string
	benchReplay := fs.Bool("bench-replay", false, "instead of trials: measure resumes through Direct Get (--replay-small) and ordered consumers (--replay-long) on a fault-free mesh")
	fs.IntVar(&replay.MaxRecover, "replay-max-recover", 1000, "bench-replay: the edges' --max-recover (the largest resume served with Direct Get)")
	fs.StringVar(&small, "replay-small", "100,300,1000", "bench-replay: comma-separated resume sizes up to --replay-max-recover (Direct Get)")
	fs.StringVar(&long, "replay-long", "3000,10000,100000", "bench-replay: comma-separated resume sizes above --replay-max-recover, at most 100000 (ordered consumer)")
	fs.IntVar(&replay.Messages, "replay-messages", 200_000, "bench-replay: messages replayed per size at least (in at least 3 resumes)")
	fs.IntVar(&replay.Clients, "replay-clients", 50, "bench-replay: clients resuming at once, spread over the edges (0: no burst)")
	fs.IntVar(&replay.Burst, "replay-burst", 3000, "bench-replay: messages each of --replay-clients resumes (above --replay-max-recover)")
	fs.IntVar(&replay.Payload, "replay-payload", 160, "bench-replay: padding bytes per message")
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
		config.InRange("replay-max-recover", replay.MaxRecover, 1, maxRoomMessages-1),
		config.Positive("replay-messages", replay.Messages),
		config.NotNegative("replay-clients", replay.Clients, "no burst"),
		config.InRange("replay-burst", replay.Burst, replay.MaxRecover+1, maxRoomMessages),
		config.NotNegative("replay-payload", replay.Payload, "none"),
	); err != nil {
		return err
	}
	var err error
	if replay.Small, err = sizes("replay-small", small, 1, replay.MaxRecover); err != nil {
		return err
	}
	if replay.Long, err = sizes("replay-long", long, replay.MaxRecover+1, maxRoomMessages); err != nil {
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
	if *benchReplay {
		return runReplayBench(ctx, mc, replay)
	}
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

// maxRoomMessages is the chat stream's per-room limit
// (--stream-max-msgs-per-subject's default, which the mesh provisions):
// the longest resume the stream can hold.
const maxRoomMessages = 100_000

// sizes parses a comma-separated list of resume sizes, each in [lo, hi].
func sizes(name, list string, lo, hi int) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, config.Usagef("--%s: %q is not a number", name, f)
		}
		if err := config.InRange(name, n, lo, hi); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// runReplayBench measures resumes through both replay paths on a
// fault-free R3 mesh whose edges serve up to --replay-max-recover with
// Direct Get and have no room memory.
func runReplayBench(ctx context.Context, mc chaostest.MeshConfig, cfg chaostest.ReplayBenchConfig) error {
	mc.EdgeArgs = append(mc.EdgeArgs, chaostest.ReplayEdgeArgs(cfg.MaxRecover)...)
	m, err := chaostest.StartMesh(ctx, mc)
	if err != nil {
		return err
	}
	defer m.Close()
	cfg.Out = os.Stdout
	began := time.Now()
	rows, err := chaostest.ReplayBench(ctx, m, cfg)
	if len(rows) > 0 {
		fmt.Printf("\n%d edges, 3 nats-servers (R3), --max-recover %d, %v\n\n%s", len(m.EdgeURLs()), cfg.MaxRecover,
			time.Since(began).Round(time.Millisecond), chaostest.ReplayTable(rows))
		for _, r := range rows {
			fmt.Printf("%s %d: slowest resume %v; edges counted %.0f replayed, %.0f through a consumer, %.0f long resumes completed\n",
				r.Path, r.Size, r.Slowest.Round(time.Microsecond), r.Replayed, r.FromConsumer, r.Completed)
		}
	}
	if err != nil {
		return err
	}
	stalls := 0
	for _, r := range rows {
		stalls += r.Stalls
	}
	if stalls > 0 {
		return fmt.Errorf("%d resumes stalled: an edge sent nothing for 10 s while messages were owed, and kept the connection open", stalls)
	}
	return nil
}
