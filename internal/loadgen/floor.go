package loadgen

import (
	"fmt"
	"io"
	"time"
)

// FloorSpec is one run of Floor.
type FloorSpec struct {
	Pairs    int           `json:"pairs"`    // loopback connections (two file descriptors each)
	Writers  int           `json:"writers"`  // writing threads, each owning Pairs/Writers connections
	Bytes    int           `json:"bytes"`    // message size, about one pushed WebSocket frame
	Duration time.Duration `json:"duration"` // how long the writers write
}

// FloorResult is what Floor measured.
type FloorResult struct {
	FloorSpec
	Elapsed       time.Duration `json:"elapsed"`
	Writes        int64         `json:"writes"`
	WritesPerSec  float64       `json:"writes_per_sec"`
	PerWrite      time.Duration `json:"per_write"`    // wall time of one write on one writer thread
	Rounds        int           `json:"rounds"`       // passes over a writer's connections
	RoundMedian   time.Duration `json:"round_median"` // one message to each of a writer's connections
	ReaderWakeups int64         `json:"reader_wakeups"`
}

// Print writes a human summary.
func (r *FloorResult) Print(w io.Writer) {
	fmt.Fprintf(w, "== floor: %d loopback connections, %d writer thread(s), %d-byte messages, %s\n",
		r.Pairs, r.Writers, r.Bytes, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "writes      %d (%.0f/s for the whole process), %.1f µs per write per thread\n",
		r.Writes, r.WritesPerSec, float64(r.PerWrite.Nanoseconds())/1e3)
	fmt.Fprintf(w, "one message to every connection: median %s over %d rounds (the floor for a fan-out's last delivery)\n",
		r.RoundMedian.Round(10*time.Microsecond), r.Rounds)
}
