package loadgen_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/loadgen"
)

// The floor measurement must measure: every round writes to every
// connection, and the figures it prints are consistent with each other.
func TestFloorMeasures(t *testing.T) {
	res, err := loadgen.Floor(context.Background(), loadgen.FloorSpec{Pairs: 200, Writers: 2, Bytes: 150, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Rounds < 2 || res.Writes < int64(res.Rounds/2)*100 {
		t.Fatalf("rounds %d, writes %d: a round is 100 writes per writer", res.Rounds, res.Writes)
	}
	if res.RoundMedian <= 0 || res.PerWrite <= 0 || res.WritesPerSec <= 0 || res.ReaderWakeups == 0 {
		t.Fatalf("implausible result %+v", res)
	}
	var out strings.Builder
	res.Print(&out)
	if !strings.Contains(out.String(), "200 loopback connections, 2 writer thread(s)") {
		t.Fatalf("summary:\n%s", out.String())
	}
	if _, err := loadgen.Floor(context.Background(), loadgen.FloorSpec{Pairs: 0, Writers: 1, Bytes: 1, Duration: time.Second}); err == nil {
		t.Fatal("zero pairs accepted")
	}
}
