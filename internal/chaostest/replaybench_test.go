//go:build unix

package chaostest

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// TestReplayBench runs the replay measurement (loadgen chaos
// --bench-replay) tiny, so that it cannot rot: both paths on the R3 mesh,
// every resume checked for recovered:true and every missed message once,
// in order, and each path confirmed by the edges' counters. It takes a
// few seconds after the build; the PARLEY_CHAOS_ variables of TestChaos
// that name the directory and the binaries apply.
func TestReplayBench(t *testing.T) {
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("starts a 3-node cluster and 3 edges; run: go test -run TestReplayBench ./internal/chaostest/")
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("CPU times come from /proc (Linux)")
	}
	ctx := t.Context()
	dir, bin := testMeshFiles(t)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	const maxRecover = 20
	mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	m, err := StartMesh(mctx, MeshConfig{Dir: dir, Bin: bin, Log: log, EdgeArgs: ReplayEdgeArgs(maxRecover)})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	rows, err := ReplayBench(ctx, m, ReplayBenchConfig{
		MaxRecover: maxRecover, Small: []int{5, maxRecover}, Long: []int{maxRecover + 1, 300},
		Messages: 200, Clients: 6, Burst: 100, Payload: 16, Out: testWriter{t},
	})
	if len(rows) > 0 {
		t.Logf("\n%s", ReplayTable(rows))
	}
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, r := range rows {
		paths = append(paths, r.Path)
		if r.Stalls > 0 {
			// A hang, not a wrong delivery: an edge's replay consumer that
			// stops being pulled (see docs/benchmarks.md). The bench
			// resumes again; the edge's own tests own that bug.
			t.Logf("%s %d: %d resumes stalled", r.Path, r.Size, r.Stalls)
		}
		if r.Messages != r.Resumes*r.Size || r.Busy <= 0 || r.Replayed < float64(r.Messages) {
			t.Errorf("%s %d: %d messages in %d resumes, %v, edges counted %v replayed", r.Path, r.Size, r.Messages, r.Resumes, r.Busy, r.Replayed)
		}
	}
	if got := strings.Join(paths, ","); got != "direct-get,direct-get,consumer,consumer,burst" {
		t.Errorf("phases %s", got)
	}
	if b := rows[len(rows)-1]; len(b.Latencies) != 6 || b.Completed != 6 {
		t.Errorf("burst: %d latencies, %v long resumes completed, want 6", len(b.Latencies), b.Completed)
	}
}
