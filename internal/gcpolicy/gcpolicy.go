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
// about 1.25 times what it keeps live. A process with GOGC in its
// environment is not tuned: GOGC is the operator's.
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

	"github.com/parley-mesh/parley/internal/config"
)

// Policy bounds. Floor is the headroom a heap always has; MinPercent the
// least GOGC the tuner sets.
const (
	Floor      = 16 << 20
	MinPercent = 25
	maxPercent = 100
)

// Percent is the GOGC the policy gives a heap with live bytes live.
func Percent(live uint64) int {
	if live == 0 {
		return maxPercent
	}
	p := math.Ceil(100 * float64(Floor) / float64(live))
	return int(min(max(p, MinPercent), maxPercent))
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
		stop = startTuner()
	}
	if log != nil {
		log.Info("memory policy", "gogc_tuned", a.Tuned, "gogc_floor_bytes", Floor, "gogc_min_percent", MinPercent,
			"memory_limit_bytes", a.MemoryLimit, "gomemlimit_from_env", a.FromEnv)
	}
	return a, stop, nil
}

// tuner re-sets GOGC after every collection: a finalizer on an unreachable
// sentinel runs once per GC cycle and re-arms itself. There is one per
// process, as there is one GOGC (running is it).
type tuner struct {
	stopped bool // under runningMu
	percent int
	sample  []metrics.Sample
}

type sentinel struct{ t *tuner }

var (
	runningMu sync.Mutex
	running   *tuner
)

// startTuner starts the process's tuner, unless it runs already; stop ends
// the one it started.
func startTuner() (stop func()) {
	runningMu.Lock()
	defer runningMu.Unlock()
	if running != nil {
		return func() {}
	}
	t := &tuner{percent: -1, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	running = t
	t.adjustLocked() // from the start, not only after the first collection
	runtime.SetFinalizer(&sentinel{t: t}, onCollected)
	return func() {
		runningMu.Lock()
		defer runningMu.Unlock()
		t.stopped = true
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
	if p := Percent(live); p != t.percent {
		debug.SetGCPercent(p)
		t.percent = p
	}
}
