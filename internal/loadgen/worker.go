package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/protocol"
)

// Latencies are recorded in microseconds, 1 µs to 5 min, 3 significant digits.
func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 300_000_000, 3) }

// worker runs its share of the connections.
type worker struct {
	spec  workerSpec
	out   *json.Encoder
	outMu sync.Mutex

	connected, subscribed, dropped, resumed, notRecovered  atomic.Int64
	delivered, published, acked, pubErrors, dups, disorder atomic.Uint64

	histMu  sync.Mutex
	hist    *hdrhistogram.Histogram
	pubHist *hdrhistogram.Histogram
	resume  *hdrhistogram.Histogram
	catchUp *hdrhistogram.Histogram // backlog: resume began → whole backlog received

	errMu  sync.Mutex
	errors map[string]int

	ackMu     sync.Mutex
	ackedSeqs map[string][]uint64 // room → acked seqs of this worker's publishes

	conns []*conn

	// Driven runs (driven.go).
	drv                driver
	dconns             []*dconn
	drooms             []*droom
	stepHists          map[int]*hdrhistogram.Histogram // by step, under histMu
	connStart, connEnd int64                           // the connect phase, Unix ns
}

type conn struct {
	i     int
	room  string
	c     atomic.Pointer[client.Client]
	start uint64
	last  atomic.Uint64
	recv  atomic.Uint64
	ended chan struct{} // closed when the current connection's reader is done
	// Backlog: the seq that completes it for this connection (0: none
	// owed), and when its resume began (Unix ns).
	target    atomic.Uint64
	resumedAt atomic.Int64
}

// RunWorker is the body of a worker process: spec on the first line of in,
// then "start" and "stop" lines; reports as JSON lines on out.
func RunWorker(ctx context.Context, in io.Reader, out io.Writer) error {
	r := bufio.NewReader(in)
	line, err := r.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	w := &worker{out: json.NewEncoder(out), hist: newHist(), pubHist: newHist(), resume: newHist(), catchUp: newHist(),
		errors: map[string]int{}, ackedSeqs: map[string][]uint64{}}
	if err := json.Unmarshal(line, &w.spec); err != nil {
		return fmt.Errorf("decode spec: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	control := make(chan string, 4)
	go func() {
		defer close(control)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			control <- strings.TrimSpace(l)
		}
	}()
	if w.spec.driven() {
		return w.runDriven(ctx, control)
	}
	progress := time.NewTicker(w.spec.Progress)
	defer progress.Stop()
	connected := w.progressWhileConnecting(progress)
	w.connStart = time.Now().UnixNano()
	w.connectAll(ctx)
	w.connEnd = time.Now().UnixNano()
	connected()
	w.send(report{Type: "ready", ConnStart: w.connStart, ConnEnd: w.connEnd})
	// Wait for start.
	for started := false; !started; {
		select {
		case c, ok := <-control:
			if !ok || c == "stop" {
				return w.finish()
			}
			started = c == "start"
		case <-progress.C:
			w.send(report{Type: "progress"})
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	w.send(report{Type: "started"})
	runCtx, stopRun := context.WithCancel(ctx)
	var pubs sync.WaitGroup
	w.startLoad(runCtx, &pubs)
	for stopped := false; !stopped; {
		select {
		case c, ok := <-control:
			stopped = !ok || c == "stop"
		case <-progress.C:
			w.send(report{Type: "progress"})
		case <-ctx.Done():
			stopRun()
			return ctx.Err()
		}
	}
	w.send(report{Type: "stopped"})
	stopRun()
	pubs.Wait()
	// Let deliveries of the last acked publishes arrive.
	time.Sleep(2 * time.Second)
	return w.finish()
}

// progressWhileConnecting sends a progress report at every tick of
// progress until the returned func is called (the caller's loop reads the
// ticker from then on).
func (w *worker) progressWhileConnecting(progress *time.Ticker) (connected func()) {
	connecting := make(chan struct{})
	go func() {
		for {
			select {
			case <-progress.C:
				w.send(report{Type: "progress"})
			case <-connecting:
				return
			}
		}
	}()
	return func() { close(connecting) }
}

func (w *worker) send(r report) {
	r.Worker = w.spec.Index
	r.Counts = w.counts()
	w.outMu.Lock()
	defer w.outMu.Unlock()
	_ = w.out.Encode(r)
}

func (w *worker) counts() Counts {
	return Counts{
		Connected: int(w.connected.Load()), Subscribed: int(w.subscribed.Load()),
		Delivered: w.delivered.Load(), Published: w.published.Load(), Acked: w.acked.Load(),
		PubErrors: w.pubErrors.Load(), Dups: w.dups.Load(), Disorder: w.disorder.Load(),
		Dropped: int(w.dropped.Load()), Resumed: int(w.resumed.Load()), NotRecovered: int(w.notRecovered.Load()),
	}
}

func (w *worker) roomOf(i int) string {
	return fmt.Sprintf("%sr%d", w.spec.Prefix, i%w.spec.Rooms)
}

// connectAll opens the worker's connections at its share of the rate, each
// from one of the source addresses, and subscribes them.
func (w *worker) connectAll(ctx context.Context) {
	s := &w.spec
	deadline := time.Now().Add(s.Ramp)
	w.conns = make([]*conn, s.NConns)
	for k := range w.conns {
		i := s.FirstConn + k
		w.conns[k] = &conn{i: i, room: w.roomOf(i)}
	}
	w.paced(ctx, func(*conn) bool {
		if time.Now().After(deadline) {
			w.countErr("ramp_timeout")
			return false
		}
		return true
	}, func(cn *conn) { w.open(ctx, cn, nil) })
}

// paced runs do for every connection that want accepts, at the worker's
// share of the connect rate (see pace), and waits for them.
func (w *worker) paced(ctx context.Context, want func(*conn) bool, do func(*conn)) {
	pace(ctx, &w.spec, len(w.conns), func(k int) bool { return want(w.conns[k]) }, func(k int) { do(w.conns[k]) })
}

func (w *worker) dialOpts(i int) []client.Option {
	s := &w.spec
	src := net.IPv4(127, 0, 0, byte(2+i%s.Sources))
	d := &websocket.Dialer{
		HandshakeTimeout: 30 * time.Second,
		ReadBufferSize:   4096, WriteBufferSize: 1024,
		NetDialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 30 * time.Second}).DialContext,
	}
	opts := []client.Option{client.WithDialer(d), client.WithMessageBuffer(256)}
	if s.Token != "" {
		opts = append(opts, client.WithToken(s.Token))
	} else {
		opts = append(opts, client.WithUser(fmt.Sprintf("%su%d", s.Prefix, i)))
	}
	return opts
}

// open dials and subscribes one connection; since != nil resumes.
func (w *worker) open(ctx context.Context, cn *conn, since *uint64) bool {
	s := &w.spec
	url := s.URLs[cn.i%len(s.URLs)]
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := client.Dial(dctx, url, w.dialOpts(cn.i)...)
	if err != nil {
		w.countErr(classify(err))
		return false
	}
	w.connected.Add(1)
	cn.c.Store(c)
	if s.Scenario == Publish {
		return true
	}
	var opts []client.SubOption
	if since != nil {
		opts = append(opts, client.Since(*since))
	}
	r, err := c.Subscribe(dctx, cn.room, opts...)
	if err != nil {
		w.countErr("sub_" + classify(err))
		c.Close()
		w.connected.Add(-1)
		return false
	}
	if since == nil {
		cn.start = r.Seq
		cn.last.Store(r.Seq)
		w.subscribed.Add(1)
	} else if r.Recovered != nil && !*r.Recovered {
		w.notRecovered.Add(1)
	}
	cn.ended = make(chan struct{})
	go w.read(cn, c, cn.ended)
	return true
}

// read consumes one connection's messages: latency from the timestamp in
// the payload, order and duplicates by seq.
func (w *worker) read(cn *conn, c *client.Client, ended chan struct{}) {
	defer close(ended)
	for m := range c.Messages() {
		now := time.Now().UnixNano()
		if t := sentAt(m.Data); t > 0 && now > t {
			w.histMu.Lock()
			_ = w.hist.RecordValue((now - t) / 1000)
			w.histMu.Unlock()
		}
		if last := cn.last.Load(); m.Seq <= last {
			w.disorder.Add(1)
		}
		cn.last.Store(m.Seq)
		cn.recv.Add(1)
		w.delivered.Add(1)
		if t := cn.target.Load(); t > 0 && m.Seq >= t && cn.target.CompareAndSwap(t, 0) {
			w.histMu.Lock()
			_ = w.catchUp.RecordValue((now - cn.resumedAt.Load()) / 1000)
			w.histMu.Unlock()
		}
	}
	w.dups.Add(c.Duplicates())
	if err := c.Err(); !errors.Is(err, client.ErrClosed) { // not closed by us
		w.dropped.Add(1)
		w.countErr("dropped_" + classify(err))
	}
}

// sentAt reads the publish time from a payload {"t":<unix ns>,…}.
func sentAt(data []byte) int64 {
	const key = `{"t":`
	if len(data) < len(key) || string(data[:len(key)]) != key {
		return 0
	}
	end := len(key)
	for end < len(data) && data[end] >= '0' && data[end] <= '9' {
		end++
	}
	t, _ := strconv.ParseInt(string(data[len(key):end]), 10, 64)
	return t
}

func payload(n int) []byte {
	b := fmt.Appendf(nil, `{"t":%d`, time.Now().UnixNano())
	if n > 0 {
		b = append(b, `,"p":"`...)
		b = append(b, strings.Repeat("x", n)...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// startLoad starts the scenario's publishers (or the mass drop).
func (w *worker) startLoad(ctx context.Context, pubs *sync.WaitGroup) {
	s := &w.spec
	switch s.Scenario {
	case PubSub:
		for _, cn := range w.conns {
			if cn.c.Load() == nil {
				continue
			}
			pubs.Add(1)
			go func() {
				defer pubs.Done()
				w.publishLoop(ctx, cn, time.Duration(float64(time.Second)/s.MsgRate), 1)
			}()
		}
	case Publish:
		for _, cn := range w.conns {
			if cn.c.Load() == nil {
				continue
			}
			for range max(s.Window, 1) {
				pubs.Add(1)
				go func() {
					defer pubs.Done()
					w.publishLoop(ctx, cn, 0, 0)
				}()
			}
		}
	case Reconnect:
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			select {
			case <-time.After(s.Duration / 3):
			case <-ctx.Done():
				return
			}
			w.massReconnect(ctx)
		}()
	}
}

// publishLoop publishes on cn every period (0: back to back), with acks.
// It starts at a random phase so a thousand clients do not publish in step.
func (w *worker) publishLoop(ctx context.Context, cn *conn, period time.Duration, jitter int) {
	c := cn.c.Load()
	if period > 0 && jitter > 0 {
		select {
		case <-time.After(time.Duration(cn.i*7919%1000) * period / 1000):
		case <-ctx.Done():
			return
		}
	}
	var tick *time.Ticker
	if period > 0 {
		tick = time.NewTicker(period)
		defer tick.Stop()
	}
	for n := 0; ; n++ {
		if tick != nil {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		} else if ctx.Err() != nil {
			return
		}
		began := time.Now()
		w.published.Add(1)
		pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ack, err := c.Publish(pctx, cn.room, fmt.Sprintf("m%d-%d", cn.i, n), json.RawMessage(payload(w.spec.Payload)))
		cancel()
		if err != nil {
			w.pubErrors.Add(1)
			var ce *client.Error
			if errors.As(err, &ce) && ce.Code == protocol.CodeRateLimited {
				time.Sleep(20 * time.Millisecond)
			}
			if errors.Is(err, client.ErrClosed) || errors.Is(err, client.ErrDisconnected) {
				return
			}
			continue
		}
		w.acked.Add(1)
		w.histMu.Lock()
		_ = w.pubHist.RecordValue(time.Since(began).Microseconds())
		w.histMu.Unlock()
		if !ack.Dup && w.spec.Scenario != Publish {
			w.ackMu.Lock()
			w.ackedSeqs[cn.room] = append(w.ackedSeqs[cn.room], ack.Seq)
			w.ackMu.Unlock()
		}
	}
}

// massReconnect drops every connection at once, then reopens each and
// resumes its room from the last seq it received.
func (w *worker) massReconnect(ctx context.Context) {
	for _, cn := range w.conns {
		if c := cn.c.Load(); c != nil {
			go c.Close() // all at once
		}
	}
	if w.spec.Backlog > 0 {
		for _, cn := range w.conns {
			if cn.c.Load() != nil {
				<-cn.ended
			}
		}
		if err := w.publishBacklog(ctx); err != nil {
			// Counted; the connections still resume (the result's
			// errors and caught-up count show what happened).
			w.countErr("backlog_" + classify(err))
		}
	}
	w.paced(ctx, func(cn *conn) bool { return cn.c.Load() != nil }, func(cn *conn) {
		<-cn.ended // resume from what the old connection really delivered
		since := cn.last.Load()
		began := time.Now()
		cn.resumedAt.Store(began.UnixNano())
		w.connected.Add(-1)
		if w.open(ctx, cn, &since) {
			w.resumed.Add(1)
			w.histMu.Lock()
			_ = w.resume.RecordValue(time.Since(began).Microseconds())
			w.histMu.Unlock()
		}
	})
}

// publishBacklog stores Backlog messages in each room of this worker's
// connections through JetStream (as a backend service would), while the
// connections are away, and tells each connection which seq completes it.
// The messages carry no send time: their latency is the resume's, measured
// as catch-up, not the live latency.
func (w *worker) publishBacklog(ctx context.Context) error {
	nc, err := nats.Connect(w.spec.NATS, nats.Name("loadgen backlog"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	rooms := map[string][]*conn{}
	for _, cn := range w.conns {
		if cn.c.Load() != nil {
			rooms[cn.room] = append(rooms[cn.room], cn)
		}
	}
	body := fmt.Appendf(nil, `{"from":"loadgen","data":{"b":1,"p":"%s"}}`, strings.Repeat("x", w.spec.Payload))
	for room, cns := range rooms {
		futures := make([]jetstream.PubAckFuture, 0, w.spec.Backlog)
		for len(futures) < w.spec.Backlog {
			f, err := js.PublishAsync("chat.room."+room, body)
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				// More in flight than the window and the server is slow
				// to ack (a busy machine): wait for the window, go on.
				select {
				case <-js.PublishAsyncComplete():
				case <-ctx.Done():
					return ctx.Err()
				}
				continue
			}
			if err != nil {
				return err
			}
			futures = append(futures, f)
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return ctx.Err()
		}
		var last uint64
		seqs := make([]uint64, 0, len(futures))
		for _, f := range futures {
			select {
			case a := <-f.Ok():
				seqs = append(seqs, a.Sequence)
				last = max(last, a.Sequence)
			case err := <-f.Err():
				return err
			}
		}
		w.ackMu.Lock()
		w.ackedSeqs[room] = append(w.ackedSeqs[room], seqs...)
		w.ackMu.Unlock()
		for _, cn := range cns {
			cn.target.Store(last)
		}
	}
	return nil
}

func (w *worker) finish() error {
	rooms := map[string]*roomReport{}
	get := func(room string) *roomReport {
		r := rooms[room]
		if r == nil {
			r = &roomReport{Room: room}
			rooms[room] = r
		}
		return r
	}
	for _, cn := range w.conns {
		if cn.c.Load() != nil && w.spec.Scenario != Publish && w.spec.Scenario != Idle {
			r := get(cn.room)
			r.Subs = append(r.Subs, subEnd{Start: cn.start, Received: cn.recv.Load(), Last: cn.last.Load()})
		}
	}
	w.ackMu.Lock()
	for room, seqs := range w.ackedSeqs {
		get(room).Acked = seqs
	}
	w.ackMu.Unlock()
	fin := report{Type: "final", Errors: w.errors}
	for _, r := range rooms {
		fin.Rooms = append(fin.Rooms, *r)
	}
	w.histMu.Lock()
	var err error
	if fin.Hist, err = encodeHist(w.hist); err == nil {
		if fin.PubHist, err = encodeHist(w.pubHist); err == nil {
			if fin.Resume, err = encodeHist(w.resume); err == nil {
				fin.CatchUp, err = encodeHist(w.catchUp)
			}
		}
	}
	w.histMu.Unlock()
	if err != nil {
		return err
	}
	w.errMu.Lock()
	w.send(fin)
	w.errMu.Unlock()
	for _, cn := range w.conns {
		if c := cn.c.Load(); c != nil {
			go c.Close()
		}
	}
	return nil
}

func encodeHist(h *hdrhistogram.Histogram) ([]byte, error) {
	b, err := json.Marshal(h.Export())
	if err != nil {
		return nil, fmt.Errorf("encode histogram: %w", err)
	}
	return b, nil
}

func decodeHist(b []byte) (*hdrhistogram.Histogram, error) {
	var s hdrhistogram.Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode histogram: %w", err)
	}
	return hdrhistogram.Import(&s), nil
}

func (w *worker) countErr(cause string) {
	w.errMu.Lock()
	w.errors[cause]++
	w.errMu.Unlock()
}

// classify names a connect or connection error by its cause.
func classify(err error) string {
	var he *client.HandshakeError
	var ce *client.CloseError
	var pe *client.Error
	switch {
	case err == nil:
		return "none"
	case errors.As(err, &he):
		return fmt.Sprintf("http_%d", he.StatusCode)
	case errors.As(err, &ce):
		return fmt.Sprintf("close_%d", ce.Code)
	case errors.As(err, &pe):
		return string(pe.Code)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no_ephemeral_port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too_many_files"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	return "other"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
