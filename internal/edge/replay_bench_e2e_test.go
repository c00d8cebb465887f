package edge_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

// BenchmarkResumeEndToEnd is a whole resume as a client sees it: dial, sub
// with since 0, read every message, close, through a real edge and a Go
// client. "directget" is an edge told to read up to 100,000 messages with
// batched Direct Get and send them with the reply (--max-recover 100000 on
// a queue of 250,000 messages / 1 GiB, which no production edge should
// have: it is how the old path would do it); "consumer" is an edge that
// replays everything through the ordered consumer (--max-recover 1),
// paced by the default queue. The two alternate (-count 3).
func BenchmarkResumeEndToEnd(b *testing.B) {
	srv := natstest.StartJetStream(b)
	dg := startEdge(b, srv.URL(), func(c *edge.Config) {
		c.RoomCache, c.MaxRecover = 0, 100_000
		c.MaxQueuedMsgs, c.MaxQueuedBytes = 250_000, 1<<30
		c.RequestTimeout = time.Minute
	})
	cons := startEdge(b, srv.URL(), func(c *edge.Config) { c.RoomCache, c.MaxRecover = 0, 1 })
	js := natstest.JetStream(b, srv.URL())
	const most = 100_000
	for i := range most {
		if _, err := js.PublishAsync("chat.room.bench", []byte(`{"from":"svc","msg_id":"m","data":{"text":"a message of an ordinary chat, long enough to look like one, with a few words more"}}`)); err != nil {
			b.Fatal(err)
		}
		if i%2000 == 1999 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	for _, n := range []int{1_000, 10_000, most} {
		for _, path := range []struct {
			name string
			e    *edge.Edge
		}{{"directget", dg}, {"consumer", cons}} {
			b.Run(fmt.Sprintf("%s/msgs=%d", path.name, n), func(b *testing.B) {
				since := uint64(most - n) // the room's seqs are 1..most
				for b.Loop() {
					c, err := client.Dial(b.Context(), edgetest.URL(path.e), client.WithUser("bench"), client.WithMessageBuffer(4096))
					if err != nil {
						b.Fatal(err)
					}
					r, err := c.Subscribe(b.Context(), "bench", client.Since(since))
					if err != nil || r.Recovered == nil || !*r.Recovered {
						b.Fatalf("resume: %+v %v", r, err)
					}
					for range n {
						if _, ok := <-c.Messages(); !ok {
							b.Fatalf("connection ended: %v", c.Err())
						}
					}
					c.Close()
				}
				b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
