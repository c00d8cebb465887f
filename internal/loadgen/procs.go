package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ProcStats is what one sampled process used during a run.
type ProcStats struct {
	PID      int     `json:"pid"`
	Name     string  `json:"name"`
	RSSFirst int64   `json:"rss_first_bytes"` // at the first sample (before the run, for a process that was there)
	RSSMax   int64   `json:"rss_max_bytes"`
	RSSLast  int64   `json:"rss_last_bytes"`
	CPU      float64 `json:"cpu_seconds"`     // during the sampled period
	CPUPct   float64 `json:"cpu_percent_avg"` // of one core, over the sampled period
	Threads  int     `json:"threads"`
	FDs      int     `json:"fds"`

	cpuStart float64
	began    time.Time
}

// sampler follows processes by name (their /proc comm) across a run.
type sampler struct {
	names   []string
	procs   map[int]*ProcStats
	exclude map[int]bool // the load tool's own workers
}

func newSampler(names []string) *sampler {
	return &sampler{names: names, procs: map[int]*ProcStats{}, exclude: map[int]bool{}}
}

var clockTicks = 100.0 // USER_HZ; 100 on Linux everywhere that matters

func (s *sampler) sample() {
	if len(s.names) == 0 {
		return
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || s.exclude[pid] {
			continue
		}
		comm, err := os.ReadFile(d + "/comm")
		if err != nil {
			continue
		}
		name := strings.TrimSpace(string(comm))
		if !s.wanted(name) {
			continue
		}
		rss, threads := readStatus(d + "/status")
		cpu := readCPU(d + "/stat")
		p := s.procs[pid]
		if p == nil {
			p = &ProcStats{PID: pid, Name: name, RSSFirst: rss, cpuStart: cpu, began: time.Now()}
			s.procs[pid] = p
		}
		p.RSSLast = rss
		p.RSSMax = max(p.RSSMax, rss)
		p.Threads = threads
		p.CPU = cpu - p.cpuStart
		if el := time.Since(p.began).Seconds(); el > 0 {
			p.CPUPct = 100 * p.CPU / el
		}
		if fds, err := os.ReadDir(d + "/fd"); err == nil {
			p.FDs = len(fds)
		}
	}
}

func (s *sampler) wanted(name string) bool {
	for _, n := range s.names {
		if n == name {
			return true
		}
	}
	return false
}

func (s *sampler) result() []ProcStats {
	out := make([]ProcStats, 0, len(s.procs))
	for _, p := range s.procs {
		out = append(out, *p)
	}
	return out
}

func readStatus(path string) (rss int64, threads int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		f := strings.Fields(string(line))
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			rss = kb << 10
		case "Threads:":
			threads, _ = strconv.Atoi(f[1])
		}
	}
	return rss, threads
}

// readCPU returns utime+stime in seconds.
func readCPU(path string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	// The command name may contain spaces: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks
}

func (p ProcStats) String() string {
	return fmt.Sprintf("%s[%d] rss %.1f MiB (max %.1f) cpu %.1fs (%.0f%%) fds %d", p.Name, p.PID,
		float64(p.RSSLast)/(1<<20), float64(p.RSSMax)/(1<<20), p.CPU, p.CPUPct, p.FDs)
}
