package archive

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// BenchmarkArchive measures archive throughput end to end: b.N messages
// wait in the stream (published before the timer starts), then an archiver
// fetches, writes (one transaction per batch) and acks them all. One op is
// one archived message; msgs/s is the figure docs/benchmarks.md quotes.
// Embedded NATS on loopback; SQLite with synchronous=FULL in a temp dir;
// PostgreSQL from PARLEY_TEST_POSTGRES_DSN (skipped, saying so, without).
func BenchmarkArchive(b *testing.B) {
	for _, k := range storeKinds {
		for _, batch := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("store=%s/batch=%d", k.name, batch), func(b *testing.B) {
				store, _ := k.open(b)
				m := newMesh(b, pjs.DefaultStreamOptions())
				if _, err := pjs.ProvisionArchive(b.Context(), m.js, pjs.DefaultArchiveOptions()); err != nil {
					b.Fatal(err)
				}
				m.publish(b, b.N, "chat.room.lobby", "chat.room.ops", "chat.dm.bob")
				b.ReportAllocs()
				b.ResetTimer()
				began := time.Now()
				a := startArchiver(b, m.srv.URL(), store, func(c *Config) {
					c.Batch = batch
					c.Consumer.AckWait = 30 * time.Second
					c.Logger = slog.New(slog.DiscardHandler)
				}, nil)
				for int(metricValue(a.metrics.Archived)) < b.N {
					select {
					case <-a.done:
						b.Fatalf("archiver ended: %v", a.err)
					case <-time.After(time.Millisecond):
					}
				}
				elapsed := time.Since(began)
				b.StopTimer()
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
				a.stop(b)
			})
		}
	}
}
