package edge

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// BenchmarkReplayRead compares the two ways a resume reads a room's stored
// messages, into the same push frames: batched Direct Get (streamReader,
// what a resume of up to --max-recover uses) and an ephemeral ordered
// consumer (streamCursor, what a longer one uses), including the
// consumer's creation and deletion. One embedded server, one stream; the
// sub-benchmarks alternate (with -count 3, each size is measured three
// times, the two paths one after the other). msgs/s is the figure to read.
func BenchmarkReplayRead(b *testing.B) {
	srv := natstest.StartJetStream(b)
	nc := natstest.Connect(b, srv.URL())
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := pjs.Provision(ctx, js, pjs.DefaultStreamOptions()); err != nil {
		b.Fatal(err)
	}
	const most = 100_000
	topic := pjs.RoomSubject("bench")
	// A chat-sized message (about 200 bytes as pushed), and another room's
	// message every tenth, so that a room's seqs are not contiguous.
	payload := []byte(`{"from":"svc","msg_id":"m","data":{"text":"a message of an ordinary chat, long enough to look like one, with a few words more"}}`)
	for i := range most {
		if _, err := js.PublishAsync(topic, payload); err != nil {
			b.Fatal(err)
		}
		if i%10 == 9 {
			if _, err := js.PublishAsync(pjs.RoomSubject("noise"), payload); err != nil {
				b.Fatal(err)
			}
		}
		if i%2000 == 1999 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	backend := &natsBackend{nc: nc, js: js, name: pjs.ChatStream, timeout: 10 * time.Second}
	reader := &streamReader{b: backend}
	for _, n := range []int{100, 300, 1_000, 10_000, most} {
		b.Run(fmt.Sprintf("directget/msgs=%d", n), func(b *testing.B) {
			benchRead(b, n, func() int {
				ds, _, err := reader.readRange(ctx, topic, 1, ^uint64(0), n)
				if err != nil {
					b.Fatal(err)
				}
				return len(ds)
			})
		})
		b.Run(fmt.Sprintf("consumer/msgs=%d", n), func(b *testing.B) {
			benchRead(b, n, func() int {
				cur := &streamCursor{b: backend, reader: reader, topic: topic, inactive: 30 * time.Second}
				defer cur.close()
				var after uint64
				for i := range n {
					d, err := cur.next(ctx, after)
					if err != nil {
						b.Fatalf("message %d: %v", i, err)
					}
					after = d.Seq
				}
				return n
			})
		})
	}
}

func benchRead(b *testing.B, n int, read func() int) {
	b.ReportAllocs()
	for b.Loop() {
		if got := read(); got != n {
			b.Fatalf("read %d messages, want %d", got, n)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
