package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// StepResult is one step of a saturate run (or the one step of a driven
// fanout): what was offered and published, and what the subscribers
// received of it by Grace after its publishing ended.
type StepResult struct {
	Step          int         `json:"step"` // from 1
	OfferedPerS   float64     `json:"offered_per_s"`
	Seconds       float64     `json:"seconds"`
	Published     uint64      `json:"published"` // taken by the server (acked by the stream, for Parley)
	PublishedPerS float64     `json:"published_per_s"`
	PubErrors     uint64      `json:"pub_errors"`
	Expected      uint64      `json:"expected"`  // deliveries owed: each published message × its room's subscribers
	Delivered     uint64      `json:"delivered"` // distinct deliveries
	DeliveredPerS float64     `json:"delivered_per_s"`
	Undelivered   uint64      `json:"undelivered"`
	Dups          uint64      `json:"dups"`
	Disorder      uint64      `json:"disorder"`
	Latency       Percentiles `json:"latency"`
	Held          bool        `json:"held"`
	Why           string      `json:"why,omitempty"` // why it did not hold
}

func (s *Spec) saturateDefaults() {
	if s.StartRate <= 0 {
		s.StartRate = 100
	}
	if s.StepFactor == 0 && s.StepAdd == 0 {
		s.StepFactor = 1.25
	}
	if s.StepDuration <= 0 {
		s.StepDuration = 10 * time.Second
	}
	if s.MaxSteps <= 0 {
		s.MaxSteps = 20
	}
	if s.P99Limit <= 0 {
		s.P99Limit = 50 * time.Millisecond
	}
	if s.Grace == 0 {
		s.Grace = 2 * time.Second
	}
}

// runDriven is the measured phase of idle, fanout and saturate, on any
// target: the connections are up.
func runDriven(ctx context.Context, spec Spec, workers []*workerProc, smp *sampler, res *Result, ticker, sampleTick <-chan time.Time, log io.Writer) error {
	for _, wp := range workers {
		fmt.Fprintln(wp.stdin, "start")
	}
	rooms := make([]string, spec.Rooms)
	for i := range rooms {
		rooms[i] = fmt.Sprintf("%sr%d", spec.Prefix, i)
	}
	seqs := make([]uint64, len(rooms)) // each room's last seq published
	var pub publisher
	if spec.Scenario != Idle {
		var err error
		if pub, err = newPublisher(ctx, &spec); err != nil {
			return err
		}
		defer pub.close()
	}
	tick := func() {
		select {
		case <-sampleTick:
			smp.sample()
		case <-ticker:
			c := sum(workers)
			fmt.Fprintf(log, "conns %d  delivered %d  dropped %d\n", c.Subscribed-c.Dropped, c.Delivered, c.Dropped)
		default:
		}
	}
	began := time.Now()
	switch spec.Scenario {
	case Idle:
		end := time.After(spec.Duration)
		for running := true; running; {
			select {
			case <-end:
				running = false
			case <-sampleTick:
				smp.sample()
			case <-ticker:
				c := sum(workers)
				fmt.Fprintf(log, "t=%-4s conns %d  dropped %d\n", time.Since(began).Round(time.Second), c.Subscribed-c.Dropped, c.Dropped)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	case Fanout:
		pr := publishStep(ctx, pub, rooms, seqs, spec.MsgRate*float64(len(rooms)), spec.Duration, 0, spec.Payload, tick)
		if err := settle(ctx, pub, spec.Grace); err != nil {
			return err
		}
		res.Seconds = pr.seconds
		smp.sample()
		res.Procs = smp.result()
		res.RSSAtEnd = rssGrowth(res.Procs, res.established())
		finals, err := finish(workers)
		if err != nil {
			return err
		}
		st, err := stepOf(finals, pr, &spec)
		if err != nil {
			return err
		}
		fillFromFinals(res, finals)
		res.BackendPub, res.BackendErrors = st.Published, st.PubErrors
		res.Undelivered, res.Counts.Dups, res.Counts.Disorder = st.Undelivered, st.Dups, st.Disorder
		res.Counts.Delivered = st.Delivered
		res.DeliveredPerS = st.DeliveredPerS
		res.Latency = st.Latency
		return nil
	case Saturate:
		rate := spec.StartRate
		for k := range spec.MaxSteps {
			pr := publishStep(ctx, pub, rooms, seqs, rate, spec.StepDuration, k, spec.Payload, tick)
			if err := settle(ctx, pub, spec.Grace); err != nil {
				return err
			}
			reps, err := askStep(ctx, workers, k)
			if err != nil {
				return err
			}
			st, err := stepOf(reps, pr, &spec)
			if err != nil {
				return err
			}
			st.Step = k + 1
			res.Steps = append(res.Steps, st)
			fmt.Fprintf(log, "step %d: %s\n", st.Step, st.line())
			if !st.Held {
				res.StopReason = fmt.Sprintf("step %d: %s", st.Step, st.Why)
				break
			}
			held := st
			res.Held = &held
			if spec.StepAdd > 0 {
				rate += spec.StepAdd
			} else {
				rate *= spec.StepFactor
			}
		}
		if res.StopReason == "" {
			res.StopReason = fmt.Sprintf("all %d steps held (--max-steps)", spec.MaxSteps)
		}
	}
	res.Seconds = time.Since(began).Seconds()
	smp.sample()
	res.Procs = smp.result()
	res.RSSAtEnd = rssGrowth(res.Procs, res.established())
	finals, err := finish(workers)
	if err != nil {
		return err
	}
	fillFromFinals(res, finals)
	return nil
}

// fillFromFinals takes the workers' final counts and errors.
func fillFromFinals(res *Result, finals []report) {
	for _, f := range finals {
		res.Counts.add(f.Counts)
		for k, v := range f.Errors {
			res.ConnectErrors[k] += v
		}
	}
}

// pubRun is what one step's publishing did.
type pubRun struct {
	offered float64
	planned time.Duration
	seconds float64
	mu      sync.Mutex
	ok      uint64
	errs    uint64
	okRoom  map[string]uint64
	lastErr error
}

// publishStep publishes rate msg/s in all, round-robin over rooms, for d,
// as step k; seqs carries each room's sequence across steps.
func publishStep(ctx context.Context, pub publisher, rooms []string, seqs []uint64, rate float64, d time.Duration, k, pad int, tick func()) *pubRun {
	pr := &pubRun{offered: rate, planned: d, okRoom: map[string]uint64{}}
	padding := strings.Repeat("x", pad)
	const every = 5 * time.Millisecond
	t := time.NewTicker(every)
	defer t.Stop()
	began := time.Now()
	var n uint64
	for {
		el := time.Since(began)
		if el > d {
			el = d
		}
		due := uint64(el.Seconds() * rate)
		for ; n < due && ctx.Err() == nil; n++ {
			ri := n % uint64(len(rooms))
			room := rooms[ri]
			seqs[ri]++
			pub.publish(room, stepPayload(k, seqs[ri], padding), func(err error) {
				pr.mu.Lock()
				defer pr.mu.Unlock()
				if err != nil {
					pr.errs++
					pr.lastErr = err
					return
				}
				pr.ok++
				pr.okRoom[room]++
			})
		}
		if el >= d || ctx.Err() != nil {
			break
		}
		tick()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	// Publishing took longer than d when the publisher could not keep up:
	// the rate is what it managed.
	pr.seconds = max(time.Since(began).Seconds(), d.Seconds())
	return pr
}

// settle waits for the publisher's outcomes, then grace for the deliveries.
func settle(ctx context.Context, pub publisher, grace time.Duration) error {
	if pub != nil {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := pub.flush(fctx)
		cancel()
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
	}
	select {
	case <-time.After(grace):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// askStep gets every worker's report of step k.
func askStep(ctx context.Context, workers []*workerProc, k int) ([]report, error) {
	for _, wp := range workers {
		fmt.Fprintf(wp.stdin, "step %d\n", k)
	}
	out := make([]report, 0, len(workers))
	timeout := time.After(time.Minute)
	for _, wp := range workers {
		select {
		case r := <-wp.steps:
			if r.Step != k {
				return nil, fmt.Errorf("worker sent step %d for %d", r.Step, k)
			}
			out = append(out, r)
		case <-wp.finaled:
			return nil, fmt.Errorf("worker ended: %v", wp.err)
		case <-timeout:
			return nil, errors.New("workers did not report a step within a minute")
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return out, nil
}

// finish stops the workers and collects their final reports.
func finish(workers []*workerProc) ([]report, error) {
	for _, wp := range workers {
		fmt.Fprintln(wp.stdin, "stop")
	}
	if err := awaitFinals(workers); err != nil {
		return nil, err
	}
	out := make([]report, 0, len(workers))
	for _, wp := range workers {
		out = append(out, *wp.final)
	}
	return out, nil
}

// awaitFinals waits (at most 2 minutes in all) for every worker's final
// report; a worker that ended without one is an error.
func awaitFinals(workers []*workerProc) error {
	timeout := time.After(2 * time.Minute)
	for _, wp := range workers {
		select {
		case <-wp.finaled:
		case <-timeout:
			return errors.New("workers did not report within 2 minutes")
		}
		if wp.final == nil {
			return fmt.Errorf("worker failed: %v", wp.err)
		}
	}
	return nil
}

// stepOf puts the workers' reports of a step beside what was published.
func stepOf(reps []report, pr *pubRun, spec *Spec) (StepResult, error) {
	st := StepResult{OfferedPerS: pr.offered, Seconds: pr.seconds}
	pr.mu.Lock()
	st.Published, st.PubErrors = pr.ok, pr.errs
	okRoom := make(map[string]uint64, len(pr.okRoom))
	for k, v := range pr.okRoom {
		okRoom[k] = v
	}
	lastErr := pr.lastErr
	pr.mu.Unlock()
	if st.Seconds > 0 {
		st.PublishedPerS = float64(st.Published) / st.Seconds
	}
	hist := newHist()
	subs, uniq := map[string]uint64{}, map[string]uint64{}
	for _, r := range reps {
		h, err := decodeHist(r.Hist)
		if err != nil {
			return st, err
		}
		hist.Merge(h)
		for _, sr := range r.StepRooms {
			subs[sr.Room] += uint64(sr.Subs)
			uniq[sr.Room] += sr.Uniq
			st.Dups += sr.Dups
			st.Disorder += sr.Disorder
		}
	}
	for room, n := range subs {
		want := n * okRoom[room]
		st.Expected += want
		st.Delivered += uniq[room]
		if want > uniq[room] {
			st.Undelivered += want - uniq[room]
		}
	}
	if st.Seconds > 0 {
		st.DeliveredPerS = float64(st.Delivered) / st.Seconds
	}
	st.Latency = percentiles(hist)
	offered := pr.offered * pr.planned.Seconds()
	switch limit := float64(spec.P99Limit) / float64(time.Millisecond); {
	case st.PubErrors > 0:
		st.Why = fmt.Sprintf("%d publish errors (%v)", st.PubErrors, lastErr)
	case offered >= 1 && st.PublishedPerS < 0.95*pr.offered:
		st.Why = fmt.Sprintf("the publisher fell behind: %.0f/s of %.0f/s", st.PublishedPerS, pr.offered)
	case st.Undelivered > 0:
		st.Why = fmt.Sprintf("%d deliveries missing %s after the step", st.Undelivered, spec.Grace)
	case st.Dups > 0 || st.Disorder > 0:
		st.Why = fmt.Sprintf("%d duplicates, %d out of order", st.Dups, st.Disorder)
	case spec.Scenario == Saturate && st.Latency.P99 > limit:
		st.Why = fmt.Sprintf("p99 %.1f ms > %.1f ms", st.Latency.P99, limit)
	case st.Expected == 0 && spec.Scenario == Saturate:
		st.Why = "nothing to deliver (no subscriber or nothing published)"
	default:
		st.Held = true
	}
	return st, nil
}

func (st StepResult) line() string {
	held := "held"
	if !st.Held {
		held = "NOT held: " + st.Why
	}
	return fmt.Sprintf("offered %.0f msg/s, published %.0f/s, delivered %.0f/s, p50 %.2f p99 %.2f ms, undelivered %d, dups %d, disorder %d: %s",
		st.OfferedPerS, st.PublishedPerS, st.DeliveredPerS, st.Latency.P50, st.Latency.P99, st.Undelivered, st.Dups, st.Disorder, held)
}

// printSteps writes the saturate table.
func (r *Result) printSteps(w io.Writer) {
	fmt.Fprintf(w, "%-5s %12s %12s %14s %9s %9s %9s %11s %6s %8s  %s\n",
		"step", "offered/s", "published/s", "delivered/s", "p50 ms", "p99 ms", "max ms", "undelivered", "dups", "disorder", "held")
	for _, st := range r.Steps {
		held := "yes"
		if !st.Held {
			held = "no: " + st.Why
		}
		fmt.Fprintf(w, "%-5d %12.0f %12.0f %14.0f %9.2f %9.2f %9.2f %11d %6d %8d  %s\n",
			st.Step, st.OfferedPerS, st.PublishedPerS, st.DeliveredPerS, st.Latency.P50, st.Latency.P99, st.Latency.Max, st.Undelivered, st.Dups, st.Disorder, held)
	}
	if r.Held != nil {
		fmt.Fprintf(w, "highest held  step %d: %.0f msg/s offered (%.0f published/s), %.0f deliveries/s, p50 %.2f / p99 %.2f ms\n",
			r.Held.Step, r.Held.OfferedPerS, r.Held.PublishedPerS, r.Held.DeliveredPerS, r.Held.Latency.P50, r.Held.Latency.P99)
	} else {
		fmt.Fprintln(w, "highest held  none")
	}
	fmt.Fprintf(w, "stopped       %s\n", r.StopReason)
}
