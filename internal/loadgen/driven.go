package loadgen

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// maxSteps bounds a saturate run's steps.
const maxSteps = 100

// The worker side of driven runs (idle, fanout, saturate on any target):
// connections through the target's driver, every received payload counted
// by its step and its room's seq.

// droom is one room of a worker's driven connections: its subscribers and,
// per step, what they received of the step's messages.
type droom struct {
	name                 string
	subs                 atomic.Int64
	uniq, dups, disorder []atomic.Uint64 // by step
}

// dconn is one driven connection. last and win are touched only by the
// goroutine reading it (its subscribe, then its reader).
type dconn struct {
	i    int
	room *droom
	c    *wsConn
	last uint64 // highest seq received
	win  uint64 // bit j: seq last-j was received
}

func (w *worker) runDriven(ctx context.Context, control <-chan string) error {
	s := &w.spec
	drv, err := newDriver(s.Target)
	if err != nil {
		return err
	}
	w.drv = drv
	w.stepHists = map[int]*hdrhistogram.Histogram{}
	steps := 1
	if s.Scenario == Saturate {
		steps = s.MaxSteps
	}
	rooms := map[string]*droom{}
	w.dconns = make([]*dconn, s.NConns)
	for k := range w.dconns {
		i := s.FirstConn + k
		name := w.roomOf(i)
		r := rooms[name]
		if r == nil {
			r = &droom{name: name, uniq: make([]atomic.Uint64, steps), dups: make([]atomic.Uint64, steps), disorder: make([]atomic.Uint64, steps)}
			rooms[name] = r
			w.drooms = append(w.drooms, r)
		}
		w.dconns[k] = &dconn{i: i, room: r}
	}
	progress := time.NewTicker(s.Progress)
	defer progress.Stop()
	connected := w.progressWhileConnecting(progress)
	deadline := time.Now().Add(s.Ramp)
	w.connStart = time.Now().UnixNano()
	pace(ctx, &w.spec, len(w.dconns), func(int) bool {
		if time.Now().After(deadline) {
			w.countErr("ramp_timeout")
			return false
		}
		return true
	}, func(k int) { w.openDriven(ctx, w.dconns[k]) })
	w.connEnd = time.Now().UnixNano()
	connected()
	w.send(report{Type: "ready", ConnStart: w.connStart, ConnEnd: w.connEnd})
	defer func() {
		for _, cn := range w.dconns {
			if cn.c != nil {
				go cn.c.close()
			}
		}
	}()
	for {
		select {
		case c, ok := <-control:
			switch {
			case !ok || c == "stop":
				fin, err := w.stepReport("final", 0)
				if err != nil {
					return err
				}
				w.errMu.Lock()
				fin.Errors = w.errors
				w.send(fin)
				w.errMu.Unlock()
				return nil
			case strings.HasPrefix(c, "step "):
				k, err := strconv.Atoi(strings.TrimPrefix(c, "step "))
				if err != nil || k < 0 || k >= steps {
					return fmt.Errorf("bad control line %q", c)
				}
				r, err := w.stepReport("step", k)
				if err != nil {
					return err
				}
				w.send(r)
			case c == "start":
				w.send(report{Type: "started"})
			}
		case <-progress.C:
			w.send(report{Type: "progress"})
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// token is the credential of user: the spec's token, one minted for the
// user, or none.
func (w *worker) token(user string) (string, error) {
	if w.spec.Token != "" || w.spec.JWTSecret == "" {
		return w.spec.Token, nil
	}
	return mintToken(w.spec.JWTSecret, user)
}

// openDriven dials one connection and subscribes it; its reader then runs
// until the connection ends.
func (w *worker) openDriven(ctx context.Context, cn *dconn) {
	s := &w.spec
	user := fmt.Sprintf("%su%d", s.Prefix, cn.i)
	tok, err := w.token(user)
	if err != nil {
		w.countErr("token")
		return
	}
	u, err := w.drv.url(s.URLs[cn.i%len(s.URLs)], user, tok)
	if err != nil {
		w.countErr("url")
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := dialWS(dctx, u, net.IPv4(127, 0, 0, byte(2+cn.i%s.Sources)))
	if err != nil {
		w.countErr(classifyDriven(err))
		return
	}
	w.connected.Add(1)
	onData := func(b []byte) { w.onData(cn, b) }
	if err := w.drv.subscribe(c, user, tok, cn.room.name, onData); err != nil {
		w.countErr("sub_" + classifyDriven(err))
		_ = c.ws.Close()
		w.connected.Add(-1)
		return
	}
	cn.c = c
	cn.room.subs.Add(1)
	w.subscribed.Add(1)
	go func() {
		c.serve(w.drv, onData)
		if c.err != nil {
			w.dropped.Add(1)
			w.countErr("dropped_" + classifyDriven(c.err))
		}
	}()
}

// onData counts one pushed payload of cn's room: its latency from the send
// time in it, and whether its seq is new, repeated or late.
func (w *worker) onData(cn *dconn, b []byte) {
	t, step, n, ok := parsePayload(b)
	r := cn.room
	if !ok || step < 0 || step >= len(r.uniq) || n == 0 {
		return // not a message of the run
	}
	now := time.Now().UnixNano()
	w.delivered.Add(1)
	if now > t {
		w.histMu.Lock()
		h := w.stepHists[step]
		if h == nil {
			h = newHist()
			w.stepHists[step] = h
		}
		_ = h.RecordValue((now - t) / 1000)
		w.histMu.Unlock()
	}
	switch {
	case n > cn.last:
		if d := n - cn.last; d >= 64 {
			cn.win = 0
		} else {
			cn.win <<= d
		}
		cn.win |= 1
		cn.last = n
		r.uniq[step].Add(1)
	case n == cn.last || (cn.last-n < 64 && cn.win&(1<<(cn.last-n)) != 0):
		w.dups.Add(1)
		r.dups[step].Add(1)
	default: // late: after a higher seq (further back than the window: taken as new)
		if cn.last-n < 64 {
			cn.win |= 1 << (cn.last - n)
		}
		w.disorder.Add(1)
		r.disorder[step].Add(1)
		r.uniq[step].Add(1)
	}
}

// stepReport is what the worker's subscribers received of step k.
func (w *worker) stepReport(typ string, k int) (report, error) {
	r := report{Type: typ, Step: k}
	for _, room := range w.drooms {
		r.StepRooms = append(r.StepRooms, stepRoom{Room: room.name, Subs: int(room.subs.Load()),
			Uniq: room.uniq[k].Load(), Dups: room.dups[k].Load(), Disorder: room.disorder[k].Load()})
	}
	w.histMu.Lock()
	h := w.stepHists[k]
	if h == nil {
		h = newHist()
	}
	var err error
	r.Hist, err = encodeHist(h)
	w.histMu.Unlock()
	return r, err
}

// pace runs do(k) for k in 0..n-1 that want accepts, at the worker's share
// of the connect rate (unpaced at rate 0), with a bounded number in
// flight, and waits for them.
func pace(ctx context.Context, s *workerSpec, n int, want func(int) bool, do func(int)) {
	var tick <-chan time.Time
	if rate := s.Rate / float64(s.Workers); rate > 0 {
		t := time.NewTicker(max(time.Duration(float64(time.Second)/rate), time.Microsecond))
		defer t.Stop()
		tick = t.C
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, dialConcurrency(&s.Spec))
	for k := range n {
		if !want(k) {
			continue
		}
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				return
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			do(k)
		}()
	}
}

// dialConcurrency is one worker's bound on handshakes in flight.
func dialConcurrency(s *Spec) int {
	switch {
	case s.DialConcurrency > 0:
		return max((s.DialConcurrency+s.Workers-1)/s.Workers, 1)
	case s.Rate <= 0:
		return max((64+s.Workers-1)/s.Workers, 1)
	}
	return 256
}
