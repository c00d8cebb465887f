package edge_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// BenchmarkConnect is the connect path a connect storm exercises: a
// WebSocket upgrade with a JWT, the user's DM subscription, and a first
// `sub` answered, through a real edge on a real JetStream server. One op is
// one connection established and subscribed; every connection stays open
// until the end, as in an idle-connection run, so heap-B/conn is what an
// idle subscribed connection keeps (the edge's share and a bare client
// socket: the client is gobwas/ws with no buffers held).
//
// rooms-of-100 joins rooms that mostly exist already on the edge (the common
// case: a room's first subscriber pays its NATS subscription once); one
// room per connection pays it every time. allocs/op counts the client's
// dial too (both ends run in this process). PARLEY_BENCH_HEAPPROFILE=path
// writes a heap profile of the held connections (path.<sub-benchmark>).
func BenchmarkConnect(b *testing.B) {
	srv := natstest.StartJetStream(b)
	if _, err := pjs.Provision(context.Background(), natstest.JetStream(b, srv.URL()), pjs.DefaultStreamOptions()); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		rooms int // 0: a room per connection
	}{{"rooms-of-100", 0}, {"room-each", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			e := startEdge(b, srv.URL(), func(c *edge.Config) { c.MaxConnections = 0 })
			base := edgetest.URL(e)
			tokens := make([]string, b.N)
			for i := range tokens {
				tokens[i] = benchToken(b, fmt.Sprintf("u%d-%d", i, b.N))
			}
			room := func(i int) string {
				if bc.rooms < 0 {
					return fmt.Sprintf("r%d-%d", i, b.N)
				}
				return fmt.Sprintf("r%d", i%100)
			}
			conns := make([]net.Conn, b.N)
			defer func() {
				for _, c := range conns {
					if c != nil {
						c.Close()
					}
				}
			}()
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			const parallel = 16
			var next sync.Mutex
			n := 0
			var wg sync.WaitGroup
			errs := make(chan error, parallel)
			b.ResetTimer()
			for range parallel {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						next.Lock()
						i := n
						n++
						next.Unlock()
						if i >= b.N {
							return
						}
						c, err := connectAndSub(base, tokens[i], room(i))
						if err != nil {
							errs <- fmt.Errorf("connection %d: %w", i, err)
							return
						}
						conns[i] = c
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			select {
			case err := <-errs:
				b.Fatal(err)
			default:
			}
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			if path := os.Getenv("PARLEY_BENCH_HEAPPROFILE"); path != "" {
				// The held connections' heap, before they close (go test's
				// -memprofile is written after the benchmark ends).
				writeHeapProfile(b, path+"."+bc.name)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
			b.ReportMetric(float64(int64(after.HeapInuse)-int64(before.HeapInuse))/float64(b.N), "heap-B/conn")
		})
	}
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	runtime.GC() // the profile is as of the last GC's sweep
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

func benchToken(b *testing.B, user string) string {
	b.Helper()
	return tokenTB(b, user, time.Hour, auth.Grants{Subscribe: []string{"*"}, Publish: []string{"*"}})
}

// connectAndSub dials with a token, subscribes to room and waits for the
// reply.
func connectAndSub(base, token, room string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, br, _, err := ws.Dial(ctx, base+"?token="+token)
	if err != nil {
		return nil, err
	}
	if br != nil {
		ws.PutReader(br)
	}
	req := `{"id":1,"op":"sub","room":"` + room + `"}`
	if err := wsutil.WriteClientText(c, []byte(req)); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := wsutil.ReadServerText(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	if !bytes.Contains(reply, []byte(`"ok":true`)) {
		c.Close()
		return nil, fmt.Errorf("sub: %s", reply)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}
