package edge_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// BenchmarkPublishPath measures acked publishes through the edge (WebSocket
// clients → edge → JetStream file storage → ack back) against the ceiling,
// a plain nats.go async JetStream publisher on the same server, with the same
// number of publishes in flight. Compare the two in one run.
func BenchmarkPublishPath(b *testing.B) {
	const clients, window = 20, 8
	srv := natstest.StartJetStream(b)
	if _, err := pjs.Provision(context.Background(), natstest.JetStream(b, srv.URL()), pjs.DefaultStreamOptions()); err != nil {
		b.Fatal(err)
	}
	payload := map[string]string{"text": "hello, world"}

	b.Run("nats-go-async", func(b *testing.B) {
		js := natstest.JetStream(b, srv.URL())
		sem := make(chan struct{}, clients*window)
		var wg sync.WaitGroup
		b.ResetTimer()
		for i := range b.N {
			sem <- struct{}{}
			f, err := js.PublishAsync(fmt.Sprint("chat.room.bench", i%clients), []byte(`{"data":{"text":"hello, world"}}`))
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case <-f.Ok():
				case err := <-f.Err():
					b.Error(err)
				}
				<-sem
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "acked/s")
	})

	b.Run("edge", func(b *testing.B) {
		e := startEdge(b, srv.URL(), func(c *edge.Config) {
			c.PublishRate, c.PublishBurst = 1e9, 1<<30
			c.RequestRate, c.RequestBurst = 1e9, 1<<30
		})
		cs := make([]*client.Client, clients)
		for i := range cs {
			c, err := client.Dial(context.Background(), edgetest.URL(e), client.WithUser(fmt.Sprint("bench", i)))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			cs[i] = c
		}
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		for i := range clients * window {
			c := cs[i%clients]
			room := fmt.Sprint("bench", i%clients)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := c.Publish(ctx, room, "", payload)
					cancel()
					if err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "acked/s")
	})
}
