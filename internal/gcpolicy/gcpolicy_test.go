package gcpolicy

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live, prev uint64
		want       int
	}{
		{0, 0, 100},
		{1 << 20, 0, 100},              // a small heap collects as with the default
		{Floor, 0, 100},                // headroom Floor = 100 %
		{2 * Floor, 0, 50},             // then the floor, as a share
		{3 * Floor, 0, 34},             // rounded up: never under the floor
		{4 * Floor, 0, 25},             // down to MinPercent
		{100 * Floor, 0, 25},           // and no lower
		{Floor*4 + 1, 0, 25},           // just past
		{Floor*4 - 4096, 0, 26},        // just before
		{100 * Floor, 100 * Floor, 25}, // steady
		{100 * Floor, 200 * Floor, 25}, // shrinking
		{100 * Floor, 96 * Floor, 25},  // grown by 4 %: steady enough
		{100 * Floor, 94 * Floor, 100}, // grown by 6 %: a storm, default headroom
		{2 * Floor, Floor, 100},
	} {
		if got := Percent(c.live, c.prev); got != c.want {
			t.Errorf("Percent(%d, %d) = %d, want %d", c.live, c.prev, got, c.want)
		}
	}
}

func TestQuietAndWorthReleasing(t *testing.T) {
	const live = 100 * Floor
	for _, c := range []struct {
		name          string
		h             heapStats
		rate          float64
		quiet, worthy bool
	}{
		{"idle, little garbage", heapStats{live: live, sinceGC: Floor, free: Floor}, 1 << 20, true, false},
		{"idle after a storm", heapStats{live: live, sinceGC: live / 2, free: Floor}, 1 << 20, true, true},
		{"idle, free pages left", heapStats{live: live, free: live / 4}, 0, true, true},
		{"busy", heapStats{live: live, sinceGC: live / 2}, live / 50, false, true},
		{"small heap idle", heapStats{live: Floor / 2, sinceGC: Floor / 2}, 512 << 10, true, false},
		{"small heap, a floor of garbage", heapStats{live: Floor / 2, sinceGC: Floor, free: 1}, 512 << 10, true, true},
		{"small heap busy", heapStats{live: Floor / 2}, 2 << 20, false, false},
	} {
		if q := quiet(c.h, c.rate); q != c.quiet {
			t.Errorf("%s: quiet = %v, want %v", c.name, q, c.quiet)
		}
		if w := worthReleasing(c.h); w != c.worthy {
			t.Errorf("%s: worthReleasing = %v, want %v", c.name, w, c.worthy)
		}
	}
}

// TestQuietProcessReturnsItsMemory runs the real tuner: garbage left by a
// burst (here 8 × Floor of it) is collected and its pages returned to the
// system once the process has been quiet for QuietFor, without waiting for
// the runtime's next collection.
func TestQuietProcessReturnsItsMemory(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	runtime.GC()
	stop := startTuner(50*time.Millisecond, nil)
	defer stop()
	runningMu.Lock()
	tn := running
	runningMu.Unlock()
	if tn == nil {
		t.Fatal("no tuner running")
	}
	released := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	debug.SetGCPercent(-1) // the burst must not be collected by the runtime meanwhile
	var burst [][]byte
	for range 8 * Floor / (1 << 20) {
		b := make([]byte, 1<<20)
		b[0] = 1
		burst = append(burst, b)
	}
	runtime.KeepAlive(burst)
	burst = nil
	before := released()
	start := time.Now()
	deadline := start.Add(QuietFor + 5*time.Second)
	for {
		runningMu.Lock()
		n := tn.releases
		runningMu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no release within %v of a quiet process holding %d MiB of garbage", time.Since(start), 8*Floor>>20)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if waited := time.Since(start); waited < QuietFor {
		t.Errorf("released after %v, before the process was quiet for %v", waited, QuietFor)
	}
	if got := released() - before; got < 4*Floor {
		t.Errorf("released %d MiB, want most of the %d MiB burst", got>>20, 8*Floor>>20)
	}
}

func TestLimit(t *testing.T) {
	for _, c := range []struct {
		flag   string
		cgroup int64
		want   int64
		bad    bool
	}{
		{"auto", 0, 0, false},
		{"auto", 1 << 30, (1 << 30) / 10 * 9, false},
		{"0", 1 << 30, 0, false},
		{"none", 1 << 30, 0, false},
		{"512MiB", 1 << 30, 512 << 20, false},
		{"2GiB", 0, 2 << 30, false},
		{"1.5GB", 0, 1_500_000_000, false},
		{"1048576", 0, 1 << 20, false},
		{"lots", 0, 0, true},
		{"-1GiB", 0, 0, true},
		{"GiB", 0, 0, true},
		{"1e30GiB", 0, 0, true},
	} {
		got, err := Flags{MemoryLimit: c.flag}.Limit(c.cgroup)
		if c.bad {
			if !errors.Is(err, ErrBadLimit) {
				t.Errorf("Limit(%q) = %d, %v; want ErrBadLimit", c.flag, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Limit(%q, cgroup %d) = %d, %v; want %d", c.flag, c.cgroup, got, err, c.want)
		}
	}
}

func TestReadLimit(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		text string
		want int64
	}{
		{"max\n", 0},
		{"9223372036854771712\n", 0}, // v1's "unlimited"
		{"1073741824\n", 1 << 30},
	} {
		p := filepath.Join(dir, "limit")
		if err := os.WriteFile(p, []byte(c.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, ok := readLimit(p); !ok || got != c.want {
			t.Errorf("readLimit(%q) = %d, %v; want %d", c.text, got, ok, c.want)
		}
	}
	if _, ok := readLimit(filepath.Join(dir, "absent")); ok {
		t.Error("an absent file is a limit")
	}
}

func gogc(t *testing.T) int {
	t.Helper()
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// TestTunerFollowsTheLiveHeap runs the real tuner in this process: a large
// live heap lowers GOGC to MinPercent after a collection, and letting it
// go brings GOGC back up.
func TestTunerFollowsTheLiveHeap(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	a, stop, err := Apply(Flags{MemoryLimit: "0"}, func(string) string { return "" }, nil)
	if err != nil || !a.Tuned {
		t.Fatalf("Apply = %+v, %v", a, err)
	}
	defer stop()
	waitFor := func(want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for gogc(t) != want {
			if time.Now().After(deadline) {
				t.Fatalf("GOGC is %d, want %d", gogc(t), want)
			}
			runtime.GC() // the finalizer runs after a cycle
			time.Sleep(10 * time.Millisecond)
		}
	}
	keep := make([][]byte, 0, 128)
	for range 8 * Floor / (1 << 20) {
		b := make([]byte, 1<<20)
		b[0] = 1
		keep = append(keep, b)
	}
	waitFor(MinPercent)
	runtime.KeepAlive(keep)
	keep = nil
	waitFor(100)
}

func TestEnvironmentWins(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	env := map[string]string{"GOGC": "50", "GOMEMLIMIT": "1GiB"}
	a, stop, err := Apply(Flags{MemoryLimit: "256MiB"}, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if a.Tuned || a.MemoryLimit != 0 || !a.FromEnv {
		t.Errorf("Apply with GOGC and GOMEMLIMIT set = %+v; want neither touched", a)
	}
	delete(env, "GOMEMLIMIT")
	before := debug.SetMemoryLimit(-1)
	a, stop2, err := Apply(Flags{MemoryLimit: "256MiB"}, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stop2()
	if got := debug.SetMemoryLimit(-1); a.MemoryLimit != 256<<20 || got != 256<<20 {
		t.Errorf("--memory-limit 256MiB set %d (applied %+v), was %d", got, a, before)
	}
}
