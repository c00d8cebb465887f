//go:build unix

package chaostest

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestChaos runs bounded fault trials against real processes and fails on
// any silent loss, duplicate, reorder or other broken promise.
//
//	go test -run TestChaos ./internal/chaostest/                       # 12 trials, ~2 min
//	PARLEY_CHAOS_TRIALS=1000 go test -run TestChaos -timeout 0 ./internal/chaostest/
//
// Knobs: PARLEY_CHAOS_TRIALS, PARLEY_CHAOS_SEED, PARLEY_CHAOS_FAULTS
// (comma-separated kinds), PARLEY_CHAOS_DIR (keep logs and data there),
// PARLEY_CHAOS_RACE=1 (build the edge and nats-server with -race, which
// go test -race does by itself),
// PARLEY_CHAOS_EDGE and PARLEY_CHAOS_NATS_SERVER (prebuilt binaries).
func TestChaos(t *testing.T) {
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("chaos trials take about 2 minutes; run: go test -run TestChaos ./internal/chaostest/")
	}
	cfg := Config{Trials: envInt(t, "PARLEY_CHAOS_TRIALS", 12), Seed: uint64(envInt(t, "PARLEY_CHAOS_SEED", 0))}
	if f := os.Getenv("PARLEY_CHAOS_FAULTS"); f != "" {
		for _, name := range strings.Split(f, ",") {
			k, err := ParseFault(strings.TrimSpace(name))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Faults = append(cfg.Faults, k)
		}
	}
	ctx := t.Context()
	began := time.Now()
	dir, bin := testMeshFiles(t)
	cfg.Out = testWriter{t}
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	m, err := StartMesh(mctx, MeshConfig{Dir: dir, Bin: bin, Log: cfg.Log})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	t.Logf("mesh up in %v: edges %v", time.Since(began).Round(time.Millisecond), m.EdgeURLs())
	sum, err := RunTrials(ctx, m, cfg)
	if sum != nil {
		t.Logf("chaos summary (%d trials, %v):\n%s", len(sum.Results), time.Since(began).Round(time.Second), sum.Table())
		if s := sum.ErrorSamples(); s != "" {
			t.Logf("publish errors, first message of each code:\n%s", s)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if n := sum.Failed(); n > 0 {
		t.Errorf("%d of %d trials broke a promise (see the lines marked FAIL above; logs in %s)", n, len(sum.Results), dir)
	}
}

// testMeshFiles is where a test's mesh keeps its data and logs
// (PARLEY_CHAOS_DIR, else a temporary directory) and the binaries it runs
// (PARLEY_CHAOS_NATS_SERVER and PARLEY_CHAOS_EDGE, else built there, with
// the race detector under go test -race or PARLEY_CHAOS_RACE=1).
func testMeshFiles(t *testing.T) (string, Binaries) {
	t.Helper()
	dir := os.Getenv("PARLEY_CHAOS_DIR")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	bin := Binaries{NATS: os.Getenv("PARLEY_CHAOS_NATS_SERVER"), Edge: os.Getenv("PARLEY_CHAOS_EDGE")}
	if bin.NATS == "" || bin.Edge == "" {
		race := raceEnabled || os.Getenv("PARLEY_CHAOS_RACE") != ""
		built, err := Build(t.Context(), dir, race)
		if err != nil {
			t.Fatal(err)
		}
		bin = built
		t.Logf("built nats-server and edge (race detector: %v) in %v", race, time.Since(began).Round(time.Millisecond))
	}
	return dir, bin
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// testWriter sends lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
