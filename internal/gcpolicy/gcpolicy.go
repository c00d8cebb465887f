// Package gcpolicy is the garbage-collection policy every Parley process
// sets for itself, so that its memory is lean without tuning from the
// environment.
//
// An edge's heap is mostly long-lived: a few KiB per idle connection, held
// for hours. Go's default (GOGC=100) lets the heap grow to twice what is
// live before collecting, so half of an edge's memory at 15,000 idle
// connections was headroom. A fixed lower GOGC would cost small processes
// (tests, a laptop's dev mesh, a quiet edge) collections they do not need.
// The policy instead keeps the headroom proportional to what is live but
// never below a floor: after every collection GOGC is set to
//
//	clamp(100 × Floor / live heap, MinPercent, 100)
//
// so a heap under Floor collects as with the default, and a large one gets
// MinPercent (25 %) headroom: the memory an idle connection costs is then
// about 1.25 times what it keeps live. Two phases get something else:
//
//   - Growing: a collection that finds the live heap grown by more than
//     Growth since the one before (a connect storm: most of what a connect
//     allocates stays) sets GOGC 100. Lean headroom there buys nothing, as
//     the heap is filling with state that stays anyway, and costs a
//     collection for every few percent of growth (a third of a storm's CPU).
//   - Quiet: once the process allocates little (under a hundredth of its
//     live heap per second, for QuietFor) while much more than it keeps
//     live is garbage or free pages (an eighth of the live heap, at least
//     Floor: what a storm left behind), it collects and returns the free
//     memory to the system at once, instead of the runtime's slow
//     scavenging. Idle connections then cost about what they keep live.
//
// A process with GOGC in its environment is not tuned: GOGC is the
// operator's.
//
// A memory limit is a second, independent knob: --memory-limit, or by
// default 90 % of the container's cgroup limit when there is one, becomes
// Go's soft memory limit (the GC works harder near it instead of the
// process being OOM-killed); GOMEMLIMIT in the environment wins.
package gcpolicy

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/parley-mesh/parley/internal/config"
)

// Policy bounds. Floor is the headroom a heap always has; MinPercent the
// least GOGC the tuner sets; Growth the live heap's growth from one
// collection to the next that counts as growing; QuietFor how long a
// process must allocate little before its free memory is returned.
const (
	Floor      = 16 << 20
	MinPercent = 25
	maxPercent = 100
	Growth     = 0.05
	QuietFor   = 2 * time.Second
)

// Percent is the GOGC the policy gives a heap in which the last collection
// found live bytes live and the one before it prev.
func Percent(live, prev uint64) int {
	if live == 0 {
		return maxPercent
	}
	if prev > 0 && float64(live) > float64(prev)*(1+Growth) {
		return maxPercent
	}
	p := math.Ceil(100 * float64(Floor) / float64(live))
	return int(min(max(p, MinPercent), maxPercent))
}

// heapStats is what the quiet check reads, in bytes.
type heapStats struct {
	allocs  uint64 // allocated since the process started
	sinceGC uint64 // of which since the last collection
	live    uint64 // live at the last collection
	free    uint64 // free pages not yet returned to the system
}

// reclaimable estimates what a collection and a release would give back:
// the free pages, and what was allocated since the last collection (a
// storm's garbage; an upper bound, as some of it stays live).
func (h heapStats) reclaimable() uint64 { return h.sinceGC + h.free }

// quiet reports whether a process that allocated rate bytes per second
// since the last check allocates little for its live heap.
func quiet(h heapStats, rate float64) bool {
	return rate < max(float64(h.live)/100, 1<<20)
}

// worthReleasing reports whether enough is reclaimable to collect for.
func worthReleasing(h heapStats) bool {
	return h.reclaimable() > max(Floor, h.live/8)
}

// Flags are the memory flags every binary takes.
type Flags struct {
	// MemoryLimit is --memory-limit: "auto" (90 % of the cgroup's limit
	// when there is one), "0" or "none" (no limit), or a size such as
	// 512MiB or 2GiB.
	MemoryLimit string
}

// Register adds --memory-limit to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.MemoryLimit, "memory-limit", "auto", "soft memory limit of the process, e.g. 512MiB or 2GiB: the GC works harder near it (auto: 90% of the container's cgroup limit, if any; 0: none; GOMEMLIMIT wins)")
}

// ErrBadLimit is a --memory-limit that does not parse.
var ErrBadLimit = errors.New("bad --memory-limit")

// Check is the flag's check for a binary's config.First: a value that does
// not parse is a usage error.
func (f Flags) Check() error {
	if _, err := f.Limit(0); err != nil {
		return config.Usagef("%v", err)
	}
	return nil
}

// Limit is the soft memory limit the flag asks for, in bytes (0: none);
// cgroupLimit is the container's limit (0: none), for "auto".
func (f Flags) Limit(cgroupLimit int64) (int64, error) {
	switch strings.ToLower(strings.TrimSpace(f.MemoryLimit)) {
	case "auto", "":
		if cgroupLimit <= 0 {
			return 0, nil
		}
		return cgroupLimit / 10 * 9, nil
	case "0", "none":
		return 0, nil
	}
	n, err := ParseBytes(f.MemoryLimit)
	if err != nil {
		return 0, fmt.Errorf("%w %q: want auto, 0 or a size such as 512MiB or 2GiB", ErrBadLimit, f.MemoryLimit)
	}
	return n, nil
}

// ParseBytes reads a size: a number of bytes with an optional suffix B,
// KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000).
func ParseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	mult := 1.0
	for _, u := range units {
		if len(s) > len(u.suffix) && strings.EqualFold(s[len(s)-len(u.suffix):], u.suffix) {
			mult, s = u.mult, strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || v*mult >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q", s)
	}
	return int64(v * mult), nil
}

// CgroupLimit is the memory limit of the process's cgroup (v2, then v1),
// 0 when there is none.
func CgroupLimit() int64 {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if n, ok := readLimit(path); ok {
			return n
		}
	}
	return 0
}

// readLimit reads a cgroup memory limit file: "max" or a huge number (v1's
// "unlimited") is no limit.
func readLimit(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, true
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n >= 1<<60 {
		return 0, true
	}
	return n, true
}

// Applied is what Apply set, for the start-up log.
type Applied struct {
	Tuned       bool  // GOGC follows the policy (false: GOGC from the environment)
	MemoryLimit int64 // the soft limit set (0: none or GOMEMLIMIT's)
	FromEnv     bool  // GOMEMLIMIT from the environment is in force
}

// Apply sets the process's policy: the GOGC tuner unless GOGC is in the
// environment, and the soft memory limit unless GOMEMLIMIT is. The tuner is
// the process's: a second Apply (tests that run a binary's main twice)
// leaves the running one. stop ends the tuner this call started (tests; a
// binary never needs to).
func Apply(f Flags, getenv func(string) string, log *slog.Logger) (a Applied, stop func(), err error) {
	limit, err := f.Limit(CgroupLimit())
	if err != nil {
		return a, nil, err
	}
	if getenv("GOMEMLIMIT") != "" {
		a.FromEnv = true
	} else if limit > 0 {
		debug.SetMemoryLimit(limit)
		a.MemoryLimit = limit
	}
	stop = func() {}
	if getenv("GOGC") == "" {
		a.Tuned = true
		stop = startTuner(time.Second, log)
	}
	if log != nil {
		log.Info("memory policy", "gogc_tuned", a.Tuned, "gogc_floor_bytes", Floor, "gogc_min_percent", MinPercent,
			"memory_limit_bytes", a.MemoryLimit, "gomemlimit_from_env", a.FromEnv)
	}
	return a, stop, nil
}

// tuner re-sets GOGC after every collection (a finalizer on an unreachable
// sentinel runs once per GC cycle and re-arms itself) and watches for quiet
// (a ticker). There is one per process, as there is one GOGC (running is
// it).
type tuner struct {
	stopped  bool // under runningMu
	percent  int
	prevLive uint64
	gcAllocs uint64 // allocated bytes when the last collection ended
	sample   []metrics.Sample
	releases int // under runningMu: quiet releases done (tests)
	log      *slog.Logger
	done     chan struct{}
}

type sentinel struct{ t *tuner }

var (
	runningMu sync.Mutex
	running   *tuner
)

// startTuner starts the process's tuner, checking for quiet every tick,
// unless it runs already; stop ends the one it started.
func startTuner(tick time.Duration, log *slog.Logger) (stop func()) {
	runningMu.Lock()
	defer runningMu.Unlock()
	if running != nil {
		return func() {}
	}
	t := &tuner{percent: -1, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/allocs:bytes"}}, log: log, done: make(chan struct{})}
	running = t
	t.adjustLocked() // from the start, not only after the first collection
	runtime.SetFinalizer(&sentinel{t: t}, onCollected)
	go t.watch(tick)
	return func() {
		runningMu.Lock()
		defer runningMu.Unlock()
		if !t.stopped {
			t.stopped = true
			close(t.done)
		}
		if running == t {
			running = nil
		}
	}
}

func onCollected(s *sentinel) {
	if s.t.adjust() {
		runtime.SetFinalizer(s, onCollected)
	}
}

// adjust sets GOGC for the live heap now; it reports false once stopped.
func (t *tuner) adjust() bool {
	runningMu.Lock()
	defer runningMu.Unlock()
	if t.stopped {
		return false
	}
	t.adjustLocked()
	return true
}

func (t *tuner) adjustLocked() {
	metrics.Read(t.sample)
	var live uint64
	if t.sample[0].Value.Kind() == metrics.KindUint64 {
		live = t.sample[0].Value.Uint64()
	}
	if t.sample[1].Value.Kind() == metrics.KindUint64 {
		t.gcAllocs = t.sample[1].Value.Uint64()
	}
	p := Percent(live, t.prevLive)
	t.prevLive = live
	if p != t.percent {
		debug.SetGCPercent(p)
		t.percent = p
	}
}

// watch returns free memory to the system once the process has been quiet
// for QuietFor: a collection, then every free page released
// (debug.FreeOSMemory), at most once per quiet spell unless garbage builds
// up again.
func (t *tuner) watch(tick time.Duration) {
	samples := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	read := func() heapStats {
		metrics.Read(samples)
		v := func(i int) uint64 {
			if samples[i].Value.Kind() == metrics.KindUint64 {
				return samples[i].Value.Uint64()
			}
			return 0
		}
		h := heapStats{allocs: v(0), live: v(1), free: v(2)}
		runningMu.Lock()
		h.sinceGC = h.allocs - min(t.gcAllocs, h.allocs)
		runningMu.Unlock()
		return h
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	last, lastAt := read(), time.Now()
	var quietSince time.Time
	for {
		select {
		case <-t.done:
			return
		case now := <-ticker.C:
			h := read()
			rate := float64(h.allocs-last.allocs) / now.Sub(lastAt).Seconds()
			last, lastAt = h, now
			if !quiet(h, rate) {
				quietSince = time.Time{}
				continue
			}
			if quietSince.IsZero() {
				quietSince = now
			}
			if now.Sub(quietSince) < QuietFor || !worthReleasing(h) {
				continue
			}
			start := time.Now()
			debug.FreeOSMemory()
			after := read()
			last, lastAt = after, time.Now()
			runningMu.Lock()
			t.releases++
			runningMu.Unlock()
			if t.log != nil {
				t.log.Debug("memory released while quiet", "reclaimable_bytes", h.reclaimable(),
					"live_bytes", after.live, "took", time.Since(start))
			}
		}
	}
}
