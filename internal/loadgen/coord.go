package loadgen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Percentiles of a latency distribution, in milliseconds.
type Percentiles struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p99_9_ms"`
	Max   float64 `json:"max_ms"`
}

func percentiles(h *hdrhistogram.Histogram) Percentiles {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Percentiles{Count: h.TotalCount(), P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)),
		P99: ms(h.ValueAtQuantile(99)), P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max())}
}

func (p Percentiles) String() string {
	if p.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %.2f ms  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  (%d samples)", p.P50, p.P90, p.P99, p.P999, p.Max, p.Count)
}

// Result is a run's outcome.
type Result struct {
	Spec           Spec    `json:"spec"`
	Connected      int     `json:"connected"`
	Subscribed     int     `json:"subscribed"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// ConnectsPerS is connections established (upgraded, authenticated and
	// subscribed) per second of the connect phase.
	ConnectsPerS  float64        `json:"connects_per_s"`
	ConnectErrors map[string]int `json:"errors"`
	Counts        Counts         `json:"counts"` // during the measured phase (+ settle)
	Seconds       float64        `json:"seconds"`
	DeliveredPerS float64        `json:"delivered_per_s"`
	AckedPerS     float64        `json:"acked_per_s"`
	BackendPub    uint64         `json:"backend_published"`
	BackendErrors uint64         `json:"backend_errors"`
	// Undelivered counts acked messages some subscriber had not received
	// when the run ended (2 s after publishing stopped): lost, or still
	// queued because the edge fell behind.
	Undelivered uint64      `json:"undelivered"`
	Latency     Percentiles `json:"latency"`
	PubLatency  Percentiles `json:"publish_ack_latency"`
	Resume      Percentiles `json:"resume_latency"`
	// CatchUp (reconnect with a backlog): from a resume's dial to its
	// last backlog message; CaughtUp counts the connections that got it all.
	CatchUp      Percentiles `json:"catch_up"`
	CaughtUp     uint64      `json:"caught_up"`
	Procs        []ProcStats `json:"procs"`
	ProcsAtReady []ProcStats `json:"procs_at_ready"`
	// RSSGrowth is each process name's RSS growth over the connect phase.
	RSSGrowth []RSSGrowth `json:"rss_growth"`
	// RSSAtEnd is the growth from before the connect phase to the end of
	// the measured one: with idle connections, what they cost once the
	// servers have settled (a runtime may return a storm's garbage late).
	RSSAtEnd []RSSGrowth `json:"rss_at_end"`
	// Saturate: every step, the highest one held (nil: none) and why the
	// ramp stopped.
	Steps      []StepResult `json:"steps,omitempty"`
	Held       *StepResult  `json:"held,omitempty"`
	StopReason string       `json:"stop_reason,omitempty"`
}

type workerProc struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	mu       sync.Mutex
	last     report
	started  report
	stopped  report
	final    *report
	readyRep report
	steps    chan report // step reports, in order
	ready    chan struct{}
	finaled  chan struct{}
	err      error
}

// Run executes spec with worker processes started from exe (this binary,
// run as "exe worker"), printing progress to log.
func Run(ctx context.Context, spec Spec, exe string, log io.Writer) (*Result, error) {
	if spec.Progress <= 0 {
		spec.Progress = 5 * time.Second
	}
	if spec.Target == "" {
		spec.Target = TargetParley
	}
	if spec.Ramp <= 0 {
		rate := spec.Rate
		if rate <= 0 {
			rate = 500 // unpaced: a slow server's pace
		}
		spec.Ramp = time.Duration(float64(spec.Conns)/rate*float64(time.Second))*2 + 30*time.Second
	}
	if spec.Scenario == Saturate {
		spec.saturateDefaults()
	}
	if spec.driven() && spec.Grace == 0 {
		spec.Grace = 2 * time.Second // as the client-package scenarios settle
	}
	if spec.Prefix == "" {
		spec.Prefix = fmt.Sprintf("lg%d-", time.Now().Unix()%100000)
	}
	if err := spec.check(); err != nil {
		return nil, err
	}
	if spec.Scenario == NATSPublish {
		return runNATSPublish(ctx, spec, log)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := &Result{Spec: spec, ConnectErrors: map[string]int{}}
	smp := newSampler(spec.Procs)
	workers, err := startWorkers(ctx, spec, exe, smp)
	defer stopWorkers(workers)
	if err != nil {
		return nil, err
	}
	ticker := time.NewTicker(spec.Progress)
	defer ticker.Stop()
	sampleTick := time.NewTicker(time.Second)
	defer sampleTick.Stop()
	if err := connectPhase(ctx, spec, workers, smp, res, ticker.C, sampleTick.C, log); err != nil {
		return nil, err
	}
	if spec.driven() {
		if err := runDriven(ctx, spec, workers, smp, res, ticker.C, sampleTick.C, log); err != nil {
			return nil, err
		}
		return res, nil
	}

	// Measured phase.
	var be *backend
	if spec.Scenario == Fanout || spec.Scenario == Reconnect {
		var err error
		if be, err = startBackend(ctx, spec); err != nil {
			return nil, err
		}
	}
	for _, wp := range workers {
		fmt.Fprintln(wp.stdin, "start")
	}
	start := time.Now()
	end := time.After(spec.Duration)
	var prev Counts
	prevAt := start
	for running := true; running; {
		select {
		case <-end:
			running = false
		case <-ticker.C:
			c := sum(workers)
			el := time.Since(prevAt).Seconds()
			fmt.Fprintf(log, "t=%-4s conns %d  delivered %.0f/s  acked %.0f/s  pub errors %d  dropped %d  resumed %d\n",
				time.Since(start).Round(time.Second), c.Connected,
				float64(c.Delivered-prev.Delivered)/el, float64(c.Acked-prev.Acked)/el, c.PubErrors, c.Dropped, c.Resumed)
			prev, prevAt = c, time.Now()
		case <-sampleTick.C:
			smp.sample()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	for _, wp := range workers {
		fmt.Fprintln(wp.stdin, "stop")
	}
	res.Seconds = time.Since(start).Seconds()
	var acked map[string][]uint64
	if be != nil {
		res.BackendPub, res.BackendErrors, acked = be.stop()
	} else {
		acked = map[string][]uint64{}
	}
	smp.sample()
	res.Procs = smp.result()
	res.RSSAtEnd = rssGrowth(res.Procs, res.established())

	if err := awaitFinals(workers); err != nil {
		return nil, err
	}
	return res, aggregate(res, workers, acked)
}

// startWorkers samples the processes once (their RSS before the run) and
// starts the worker processes, each with its share of the connections.
func startWorkers(ctx context.Context, spec Spec, exe string, smp *sampler) ([]*workerProc, error) {
	smp.sample()
	workers := make([]*workerProc, 0, spec.Workers)
	per, extra := spec.Conns/spec.Workers, spec.Conns%spec.Workers
	first := 0
	for i := range spec.Workers {
		n := per
		if i < extra {
			n++
		}
		ws := workerSpec{Spec: spec, Index: i, FirstConn: first, NConns: n}
		first += n
		wp, err := startWorker(ctx, exe, ws)
		if err != nil {
			return workers, err
		}
		smp.exclude[wp.cmd.Process.Pid] = true
		workers = append(workers, wp)
	}
	return workers, nil
}

func stopWorkers(workers []*workerProc) {
	for _, wp := range workers {
		_ = wp.stdin.Close()
		_ = wp.cmd.Wait()
	}
}

// connectPhase waits for every worker to have opened its connections, and
// records the connect rate and the sampled processes' RSS growth.
func connectPhase(ctx context.Context, spec Spec, workers []*workerProc, smp *sampler, res *Result, ticker, sampleTick <-chan time.Time, log io.Writer) error {
	began := time.Now()
	for _, wp := range workers {
		for waiting := true; waiting; {
			select {
			case <-wp.ready:
				waiting = false
			case <-wp.finaled:
				return fmt.Errorf("worker ended before ready: %v", wp.err)
			case <-ticker:
				fmt.Fprintf(log, "connecting: %s %d/%d connected\n", time.Since(began).Round(time.Second), total(workers, func(r report) int { return r.Counts.Connected }), spec.Conns)
			case <-sampleTick:
				smp.sample()
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	res.ConnectSeconds = time.Since(began).Seconds()
	// The connect phase proper: from the first worker's first dial to the
	// last worker's last subscription (worker start-up not counted).
	var first, last int64
	for _, wp := range workers {
		wp.mu.Lock()
		r := wp.readyRep
		wp.mu.Unlock()
		if r.ConnStart > 0 && (first == 0 || r.ConnStart < first) {
			first = r.ConnStart
		}
		last = max(last, r.ConnEnd)
	}
	if first > 0 && last > first {
		res.ConnectSeconds = float64(last-first) / 1e9
	}
	res.Connected = total(workers, func(r report) int { return r.Counts.Connected })
	res.Subscribed = total(workers, func(r report) int { return r.Counts.Subscribed })
	established := res.established()
	if res.ConnectSeconds > 0 {
		res.ConnectsPerS = float64(established) / res.ConnectSeconds
	}
	smp.sample()
	res.ProcsAtReady = smp.result()
	res.RSSGrowth = rssGrowth(res.ProcsAtReady, established)
	fmt.Fprintf(log, "connected %d of %d in %.1fs (%d subscribed, %.0f/s)\n", res.Connected, spec.Conns, res.ConnectSeconds, res.Subscribed, res.ConnectsPerS)
	for _, p := range res.ProcsAtReady {
		fmt.Fprintf(log, "  %s\n", p)
	}
	return nil
}

// established is how many connections the run set up: subscribed ones,
// or connected ones for publishers (they do not subscribe).
func (r *Result) established() int {
	if r.Spec.Scenario == Publish {
		return r.Connected
	}
	return r.Subscribed
}

// RSSGrowth is what the processes of one name grew by over the connect
// phase, in all and per connection established.
type RSSGrowth struct {
	Name        string  `json:"name"`
	Procs       int     `json:"procs"`
	BeforeBytes int64   `json:"before_bytes"`
	AfterBytes  int64   `json:"after_bytes"`
	KiBPerConn  float64 `json:"kib_per_conn"`
}

func rssGrowth(procs []ProcStats, conns int) []RSSGrowth {
	by := map[string]*RSSGrowth{}
	var names []string
	for _, p := range procs {
		if p.RSSLast == 0 {
			continue // gone
		}
		g := by[p.Name]
		if g == nil {
			g = &RSSGrowth{Name: p.Name}
			by[p.Name] = g
			names = append(names, p.Name)
		}
		g.Procs++
		g.BeforeBytes += p.RSSFirst
		g.AfterBytes += p.RSSLast
	}
	slices.Sort(names)
	out := make([]RSSGrowth, 0, len(names))
	for _, n := range names {
		g := by[n]
		if conns > 0 {
			g.KiBPerConn = float64(g.AfterBytes-g.BeforeBytes) / 1024 / float64(conns)
		}
		out = append(out, *g)
	}
	return out
}

func aggregate(res *Result, workers []*workerProc, acked map[string][]uint64) error {
	hist, pubHist, resume, catchUp := newHist(), newHist(), newHist(), newHist()
	var startC, stopC, fin Counts
	subsByRoom := map[string][]subEnd{}
	for _, wp := range workers {
		f := wp.final
		startC.add(wp.started.Counts)
		stopC.add(wp.stopped.Counts)
		fin.add(f.Counts)
		for k, v := range f.Errors {
			res.ConnectErrors[k] += v
		}
		for _, pair := range []struct {
			dst *hdrhistogram.Histogram
			src []byte
		}{{hist, f.Hist}, {pubHist, f.PubHist}, {resume, f.Resume}, {catchUp, f.CatchUp}} {
			h, err := decodeHist(pair.src)
			if err != nil {
				return err
			}
			pair.dst.Merge(h)
		}
		for _, r := range f.Rooms {
			acked[r.Room] = append(acked[r.Room], r.Acked...)
			subsByRoom[r.Room] = append(subsByRoom[r.Room], r.Subs...)
		}
	}
	for room, subs := range subsByRoom {
		seqs := acked[room]
		slices.Sort(seqs)
		for _, s := range subs {
			i := sort.Search(len(seqs), func(i int) bool { return seqs[i] > s.Start })
			if want := uint64(len(seqs) - i); want > s.Received {
				res.Undelivered += want - s.Received
			}
		}
	}
	res.Counts = Counts{
		Connected: fin.Connected, Subscribed: fin.Subscribed,
		Delivered: fin.Delivered - startC.Delivered, Published: fin.Published - startC.Published,
		Acked: fin.Acked - startC.Acked, PubErrors: fin.PubErrors - startC.PubErrors,
		Dups: fin.Dups, Disorder: fin.Disorder, Dropped: fin.Dropped, Resumed: fin.Resumed, NotRecovered: fin.NotRecovered,
	}
	window := res.Seconds
	res.DeliveredPerS = float64(stopC.Delivered-startC.Delivered) / window
	res.AckedPerS = float64(stopC.Acked-startC.Acked) / window
	res.Latency = percentiles(hist)
	res.PubLatency = percentiles(pubHist)
	res.Resume = percentiles(resume)
	res.CatchUp = percentiles(catchUp)
	res.CaughtUp = uint64(catchUp.TotalCount())
	return nil
}

// Print writes the human summary.
func (r *Result) Print(w io.Writer) {
	s := r.Spec
	target := s.Target
	if target == "" {
		target = TargetParley
	}
	fmt.Fprintf(w, "\n== %s on %s: %d connections (%d workers, %d URLs, %d source addresses), %d rooms, %s measured\n",
		s.Scenario, target, s.Conns, s.Workers, len(s.URLs), s.Sources, s.Rooms, time.Duration(r.Seconds*float64(time.Second)).Round(time.Second))
	fmt.Fprintf(w, "connected   %d (%d subscribed) in %.2fs = %.0f connects/s\n", r.Connected, r.Subscribed, r.ConnectSeconds, r.ConnectsPerS)
	for _, g := range r.RSSGrowth {
		fmt.Fprintf(w, "rss growth  %s: %d process(es), %.1f → %.1f MiB over the connect phase = %.2f KiB per connection\n",
			g.Name, g.Procs, float64(g.BeforeBytes)/(1<<20), float64(g.AfterBytes)/(1<<20), g.KiBPerConn)
	}
	for _, g := range r.RSSAtEnd {
		fmt.Fprintf(w, "rss at end  %s: %.1f → %.1f MiB from before connecting to the end of the measured phase = %.2f KiB per connection\n",
			g.Name, float64(g.BeforeBytes)/(1<<20), float64(g.AfterBytes)/(1<<20), g.KiBPerConn)
	}
	if len(r.ConnectErrors) > 0 {
		keys := make([]string, 0, len(r.ConnectErrors))
		for k := range r.ConnectErrors {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%d", k, r.ConnectErrors[k]))
		}
		fmt.Fprintf(w, "errors      %s\n", strings.Join(parts, " "))
	}
	if s.Scenario == Saturate {
		r.printSteps(w)
	} else {
		fmt.Fprintf(w, "delivered   %d (%.0f/s)   undelivered at the end %d   duplicates %d   out of order %d\n", r.Counts.Delivered, r.DeliveredPerS, r.Undelivered, r.Counts.Dups, r.Counts.Disorder)
	}
	if r.BackendPub > 0 {
		fmt.Fprintf(w, "backend     %d published (%d errors)\n", r.BackendPub, r.BackendErrors)
	}
	if r.Counts.Published > 0 {
		fmt.Fprintf(w, "publishes   %d sent, %d acked (%.0f/s), %d errors\n", r.Counts.Published, r.Counts.Acked, r.AckedPerS, r.Counts.PubErrors)
		fmt.Fprintf(w, "ack latency %s\n", r.PubLatency)
	}
	if s.Scenario != Saturate {
		fmt.Fprintf(w, "latency     %s\n", r.Latency)
	}
	if r.Counts.Resumed > 0 || s.Scenario == Reconnect {
		fmt.Fprintf(w, "resumed     %d (not recovered %d, dropped %d), resume latency %s\n", r.Counts.Resumed, r.Counts.NotRecovered, r.Counts.Dropped, r.Resume)
		if s.Backlog > 0 {
			fmt.Fprintf(w, "backlog     %d per room: %d connections caught up, dial to last backlog message %s\n", s.Backlog, r.CaughtUp, r.CatchUp)
		}
	} else if r.Counts.Dropped > 0 {
		fmt.Fprintf(w, "dropped     %d connections during the run\n", r.Counts.Dropped)
	}
	for _, p := range r.Procs {
		fmt.Fprintf(w, "proc        %s\n", p)
	}
	// Memory by process name, at the end of the connect phase.
	rss, count := map[string]int64{}, map[string]int{}
	var names []string
	for _, p := range r.ProcsAtReady {
		if p.RSSLast == 0 {
			continue // gone
		}
		if count[p.Name] == 0 {
			names = append(names, p.Name)
		}
		rss[p.Name] += p.RSSLast
		count[p.Name]++
	}
	slices.Sort(names)
	for _, n := range names {
		line := fmt.Sprintf("memory      %s: %d process(es), %.1f MiB RSS at ready", n, count[n], float64(rss[n])/(1<<20))
		if r.Connected > 0 {
			line += fmt.Sprintf(" = %.1f KiB per connection", float64(rss[n])/1024/float64(r.Connected))
		}
		fmt.Fprintln(w, line)
	}
}

func startWorker(ctx context.Context, exe string, ws workerSpec) (*workerProc, error) {
	cmd := exec.CommandContext(ctx, exe, "worker")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	b, _ := json.Marshal(ws)
	if _, err := stdin.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("send spec: %w", err)
	}
	wp := &workerProc{cmd: cmd, stdin: stdin, steps: make(chan report, maxSteps), ready: make(chan struct{}), finaled: make(chan struct{})}
	go func() {
		defer close(wp.finaled)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<30)
		readyOnce := sync.Once{}
		for sc.Scan() {
			var r report
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				wp.err = fmt.Errorf("worker %d: bad report: %w", ws.Index, err)
				continue
			}
			wp.mu.Lock()
			wp.last = r
			switch r.Type {
			case "ready":
				wp.readyRep = r
				readyOnce.Do(func() { close(wp.ready) })
			case "step":
				select {
				case wp.steps <- r:
				default: // more than the coordinator asked for
				}
			case "started":
				wp.started = r
			case "stopped":
				wp.stopped = r
			case "final":
				wp.final = &r
			case "error":
				wp.err = errors.New(r.Message)
			}
			wp.mu.Unlock()
		}
		if wp.err == nil {
			wp.err = sc.Err()
		}
	}()
	return wp, nil
}

func total(ws []*workerProc, f func(report) int) int {
	n := 0
	for _, wp := range ws {
		wp.mu.Lock()
		n += f(wp.last)
		wp.mu.Unlock()
	}
	return n
}

func sum(ws []*workerProc) Counts {
	var c Counts
	for _, wp := range ws {
		wp.mu.Lock()
		c.add(wp.last.Counts)
		wp.mu.Unlock()
	}
	return c
}

// backend publishes like a backend service, straight to JetStream, at
// MsgRate per room, and remembers the acked seqs per room.
type backend struct {
	cancel context.CancelFunc
	done   chan struct{}
	nc     *nats.Conn
	mu     sync.Mutex
	acked  map[string][]uint64
	sent   uint64
	errs   uint64
}

func startBackend(ctx context.Context, spec Spec) (*backend, error) {
	nc, err := nats.Connect(spec.NATS, nats.Name("parley-loadgen-backend"))
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		nc.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	b := &backend{cancel: cancel, done: make(chan struct{}), nc: nc, acked: map[string][]uint64{}}
	rooms := make([]string, spec.Rooms)
	for i := range rooms {
		rooms[i] = fmt.Sprintf("%sr%d", spec.Prefix, i)
	}
	total := spec.MsgRate * float64(spec.Rooms)
	const step = 10 * time.Millisecond
	go func() {
		defer close(b.done)
		tick := time.NewTicker(step)
		defer tick.Stop()
		began := time.Now()
		var n uint64
		for {
			select {
			case <-ctx.Done():
				select {
				case <-js.PublishAsyncComplete():
				case <-time.After(10 * time.Second):
				}
				return
			case <-tick.C:
			}
			due := uint64(time.Since(began).Seconds() * total)
			for ; n < due; n++ {
				room := rooms[n%uint64(len(rooms))]
				msg := nats.NewMsg("chat.room." + room)
				msg.Data = fmt.Appendf(nil, `{"from":"loadgen","data":%s}`, payload(spec.Payload))
				fut, err := js.PublishMsgAsync(msg)
				b.mu.Lock()
				b.sent++
				if err != nil {
					b.errs++
					b.mu.Unlock()
					continue
				}
				b.mu.Unlock()
				go func() {
					select {
					case ack := <-fut.Ok():
						b.mu.Lock()
						b.acked[room] = append(b.acked[room], ack.Sequence)
						b.mu.Unlock()
					case <-fut.Err():
						b.mu.Lock()
						b.errs++
						b.mu.Unlock()
					}
				}()
			}
		}
	}()
	return b, nil
}

func (b *backend) stop() (sent, errs uint64, acked map[string][]uint64) {
	b.cancel()
	<-b.done
	time.Sleep(100 * time.Millisecond) // the last ack goroutines
	b.nc.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sent, b.errs, b.acked
}

// runNATSPublish measures the ceiling the edge's publish path is compared
// with: one nats.go connection publishing to JetStream asynchronously with
// Conns × Window publishes in flight, for Duration.
func runNATSPublish(ctx context.Context, spec Spec, log io.Writer) (*Result, error) {
	res := &Result{Spec: spec, ConnectErrors: map[string]int{}}
	nc, err := nats.Connect(spec.NATS, nats.Name("parley-loadgen-nats-publish"))
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	window := max(spec.Conns*max(spec.Window, 1), 1)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(window))
	if err != nil {
		return nil, err
	}
	smp := newSampler(spec.Procs)
	smp.sample()
	hist := newHist()
	var mu sync.Mutex
	var acked, errs uint64
	sem := make(chan struct{}, window)
	start := time.Now()
	end := start.Add(spec.Duration)
	var wg sync.WaitGroup
	for n := 0; time.Now().Before(end) && ctx.Err() == nil; n++ {
		sem <- struct{}{}
		room := fmt.Sprintf("%sr%d", spec.Prefix, n%spec.Rooms)
		began := time.Now()
		fut, err := js.PublishAsync("chat.room."+room, fmt.Appendf(nil, `{"from":"loadgen","data":%s}`, payload(spec.Payload)))
		if err != nil {
			<-sem
			mu.Lock()
			errs++
			mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			select {
			case <-fut.Ok():
				mu.Lock()
				acked++
				_ = hist.RecordValue(time.Since(began).Microseconds())
				mu.Unlock()
			case <-fut.Err():
				mu.Lock()
				errs++
				mu.Unlock()
			}
		}()
		if n%10000 == 0 {
			smp.sample()
		}
	}
	res.Seconds = time.Since(start).Seconds()
	wg.Wait()
	smp.sample()
	res.Procs = smp.result()
	res.Counts = Counts{Published: acked + errs, Acked: acked, PubErrors: errs}
	res.AckedPerS = float64(acked) / res.Seconds
	res.PubLatency = percentiles(hist)
	res.Latency = percentiles(newHist())
	fmt.Fprintf(log, "nats-publish: %d acked in %.1fs\n", acked, res.Seconds)
	return res, nil
}
