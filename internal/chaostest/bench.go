//go:build unix

package chaostest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// BenchEdgeArgs returns the edge flags a throughput mesh needs: without
// the per-connection publish limits, so that it measures the mesh and not
// the rate limiter.
func BenchEdgeArgs() []string {
	return []string{
		"--publish-rate", "1000000", "--publish-burst", "1000000",
		"--request-rate", "1000000", "--request-burst", "1000000",
		"--max-inflight-publishes", "4096",
	}
}

// BenchConfig is an acked-publish throughput measurement: Conns
// connections spread over the edges, each keeping Window publishes in
// flight, counted for Duration after Warmup.
type BenchConfig struct {
	Conns, Window, Rooms, Payload int
	Warmup, Duration              time.Duration
}

// BenchResult is what a measurement counted.
type BenchResult struct {
	Acked    int64
	Errors   map[string]int
	Duration time.Duration
}

// PerSecond is acked publishes per second.
func (r BenchResult) PerSecond() float64 { return float64(r.Acked) / r.Duration.Seconds() }

// Bench measures acked publishes per second through the edges of m (start
// it with BenchEdgeArgs). It injects no fault.
func Bench(ctx context.Context, m *Mesh, cfg BenchConfig) (BenchResult, error) {
	if cfg.Conns <= 0 {
		cfg.Conns = 24
	}
	if cfg.Window <= 0 {
		cfg.Window = 16
	}
	if cfg.Rooms <= 0 {
		cfg.Rooms = 8
	}
	if cfg.Warmup <= 0 {
		cfg.Warmup = 2 * time.Second
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 10 * time.Second
	}
	pad := string(bytes.Repeat([]byte("x"), max(cfg.Payload, 0)))
	start := time.Now()
	from, until := start.Add(cfg.Warmup), start.Add(cfg.Warmup+cfg.Duration)
	var acked atomic.Int64
	var mu sync.Mutex
	errs := map[string]int{}
	urls := m.EdgeURLs()
	run := fmt.Sprintf("b%d", start.UnixNano()%1e6)
	var wg sync.WaitGroup
	var dialErr atomic.Value
	for i := range cfg.Conns {
		wg.Go(func() {
			u, _ := url.Parse(urls[i%len(urls)])
			u.RawQuery = url.Values{"user": {fmt.Sprintf("%s-%d", run, i)}}.Encode()
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ws, _, err := dialer.DialContext(dctx, u.String(), nil)
			cancel()
			if err != nil {
				dialErr.Store(err)
				return
			}
			defer ws.Close()
			room := fmt.Sprintf("%s-r%d", run, i%cfg.Rooms)
			n := 0
			send := func() error {
				n++
				b, _ := json.Marshal(request{ID: int64(n), Op: "pub", Room: room, MsgID: fmt.Sprintf("%d-%d", i, n),
					Data: map[string]string{"pad": pad}})
				_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
				return ws.WriteMessage(websocket.TextMessage, b)
			}
			for range cfg.Window {
				if send() != nil {
					return
				}
			}
			_ = ws.SetReadDeadline(until)
			for time.Now().Before(until) && ctx.Err() == nil {
				_, frame, err := ws.ReadMessage()
				if err != nil {
					return
				}
				for _, b := range bytes.Split(frame, []byte{'\n'}) {
					var l line
					if len(bytes.TrimSpace(b)) == 0 || json.Unmarshal(b, &l) != nil || l.ID == 0 {
						continue
					}
					now := time.Now()
					switch {
					case l.Error != nil:
						mu.Lock()
						errs[l.Error.Code]++
						mu.Unlock()
					case l.OK && now.After(from) && now.Before(until):
						acked.Add(1)
					}
					if send() != nil {
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if err, ok := dialErr.Load().(error); ok {
		return BenchResult{}, fmt.Errorf("bench connection: %w", err)
	}
	return BenchResult{Acked: acked.Load(), Errors: errs, Duration: cfg.Duration}, nil
}
