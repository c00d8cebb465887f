//go:build unix

package chaostest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// ReplayBenchConfig measures both replay paths of a resume on one mesh
// (docs/benchmarks.md, "Resumes: batched Direct Get vs an ordered
// consumer"): resumes of Small sizes (at most MaxRecover messages: batched
// Direct Get) and of Long sizes (more: an ephemeral ordered consumer), one
// at a time, then Clients clients resuming Burst messages each at once.
type ReplayBenchConfig struct {
	// MaxRecover is the edges' --max-recover: the largest resume served
	// with Direct Get.
	MaxRecover  int
	Small, Long []int
	// Messages is how many messages each size replays at least (in as
	// many resumes of that size as it takes, never fewer than 3), so that
	// the CPU counters (10 ms ticks) have something to count.
	Messages int
	// Clients resume Burst messages each at the same moment, spread over
	// the edges (0: no burst).
	Clients, Burst int
	Payload        int // padding bytes per message
	Out            io.Writer
}

// ReplayEdgeArgs are the edge flags of a replay measurement: no rate
// limits (BenchEdgeArgs), no room memory, so that every resume reads the
// stream, and the given --max-recover.
func ReplayEdgeArgs(maxRecover int) []string {
	return append(BenchEdgeArgs(), "--room-cache", "0", "--max-recover", strconv.Itoa(maxRecover))
}

// ReplayRow is one measured phase.
type ReplayRow struct {
	Path     string // "direct-get", "consumer" or "burst"
	Size     int    // messages per resume
	Resumes  int
	Messages int
	// Busy is the sum of the resumes' times, from sending the sub to
	// receiving its last missed message; for a burst, the wall time from
	// the common start to the last resume completed.
	Busy time.Duration
	// Stalls are resumes that hung (nothing for stallAfter while messages
	// were owed): not in the other figures; a phase resumes again on a new
	// connection, a burst counts them out.
	Stalls int
	// Slowest is the longest resume; Latencies are the burst's (sorted).
	Slowest   time.Duration
	Latencies []time.Duration
	// CPU seconds of the edges and of the nats-servers over the phase.
	EdgeCPU, NATSCPU float64
	// Deltas of the edges' counters over the phase.
	FromConsumer, Replayed, FromMemory, Completed float64
}

// PerSecond is messages replayed per second of Busy.
func (r ReplayRow) PerSecond() float64 { return float64(r.Messages) / r.Busy.Seconds() }

// ResumesPerSecond is resumes completed per second of Busy.
func (r ReplayRow) ResumesPerSecond() float64 { return float64(r.Resumes) / r.Busy.Seconds() }

// EdgePer1000 and NATSPer1000 are CPU seconds per 1,000 messages replayed.
func (r ReplayRow) EdgePer1000() float64 { return 1000 * r.EdgeCPU / float64(r.Messages) }
func (r ReplayRow) NATSPer1000() float64 { return 1000 * r.NATSCPU / float64(r.Messages) }

// ReplayBench fills one room of m (started with ReplayEdgeArgs) with
// max(Small, Long, Burst) messages, one other room's message interleaved
// every tenth, then measures. Every resume must answer recovered:true and
// deliver exactly the room's messages after its since, once, in order; a
// resume that does not fails the measurement. Small resumes must not touch
// a consumer, long ones must.
func ReplayBench(ctx context.Context, m *Mesh, cfg ReplayBenchConfig) ([]ReplayRow, error) {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Messages <= 0 {
		cfg.Messages = 100_000
	}
	biggest := 1
	if cfg.Clients > 0 {
		biggest = max(biggest, cfg.Burst)
	}
	for _, n := range append(slices.Clone(cfg.Small), cfg.Long...) {
		biggest = max(biggest, n)
	}
	for _, n := range cfg.Small {
		if n > cfg.MaxRecover {
			return nil, fmt.Errorf("small resume %d is above --max-recover %d", n, cfg.MaxRecover)
		}
	}
	long := slices.Clone(cfg.Long)
	if cfg.Clients > 0 {
		long = append(long, cfg.Burst)
	}
	for _, n := range long {
		if n <= cfg.MaxRecover {
			return nil, fmt.Errorf("long resume %d is not above --max-recover %d", n, cfg.MaxRecover)
		}
	}
	run := fmt.Sprintf("rb%d", time.Now().UnixNano()%1e6)
	room := run + "-room"
	began := time.Now()
	seqs, err := fillRoom(ctx, m, room, run+"-other", biggest, cfg.Payload)
	if err != nil {
		return nil, fmt.Errorf("fill: %w", err)
	}
	fmt.Fprintf(cfg.Out, "filled %s: %d messages (and %d of another room) in %v, stream seq %d..%d\n",
		room, len(seqs), biggest/9, time.Since(began).Round(time.Millisecond), seqs[0], seqs[len(seqs)-1])
	urls := m.EdgeURLs()
	var rows []ReplayRow
	phase := func(path string, size int) error {
		resumes := max(3, (cfg.Messages+size-1)/size)
		before, err := m.replaySnapshot(ctx)
		if err != nil {
			return err
		}
		var busy, slowest time.Duration
		c, err := dialRaw(ctx, urls[len(rows)%len(urls)], run+"-seq")
		if err != nil {
			return err
		}
		defer func() { c.close() }()
		var id int64
		stalls := 0
		for done := 0; done < resumes; {
			d, err := resume(ctx, c, &id, room, seqs, size, true)
			if errors.Is(err, errStalled) && stalls < maxStalls {
				// Not a wrong delivery but a hang: say so, and resume
				// again on a new connection, as a client would.
				stalls++
				fmt.Fprintf(cfg.Out, "STALL: %s resume of %d on %s: %v; consumers of the stream: %s\n", path, size, c.ws.RemoteAddr(), err, m.consumers(ctx))
				c.close()
				if c, err = dialRaw(ctx, urls[(len(rows)+stalls)%len(urls)], run+"-seq"); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				return fmt.Errorf("%s resume of %d: %w", path, size, err)
			}
			done++
			busy += d
			slowest = max(slowest, d)
		}
		after, err := m.replaySnapshot(ctx)
		if err != nil {
			return err
		}
		row := after.minus(before)
		row.Path, row.Size, row.Resumes, row.Messages, row.Busy, row.Slowest = path, size, resumes, resumes*size, busy, slowest
		row.Stalls = stalls
		err = m.settle(ctx, before, &row, cfg.MaxRecover)
		rows = append(rows, row)
		return err
	}
	for _, n := range cfg.Small {
		if err := phase("direct-get", n); err != nil {
			return rows, err
		}
	}
	for _, n := range cfg.Long {
		if err := phase("consumer", n); err != nil {
			return rows, err
		}
	}
	if cfg.Clients > 0 && cfg.Burst > 0 {
		row, before, err := m.replayBurst(ctx, run, room, seqs, cfg.Clients, cfg.Burst)
		if err != nil {
			return rows, err
		}
		err = m.settle(ctx, before, &row, cfg.MaxRecover)
		rows = append(rows, row)
		if err != nil {
			return rows, err
		}
	}
	return rows, nil
}

// checkPath says so when the edges' counters show a resume took another
// path than its size should (a measurement of the wrong thing). A long
// resume reads its first maxRecover messages with Direct Get (the read
// that finds it is long) and the rest through its consumer.
func (r ReplayRow) checkPath(maxRecover int) error {
	viaConsumer := float64(r.Resumes * max(r.Size-maxRecover, 0))
	switch {
	case r.FromMemory > 0:
		return fmt.Errorf("%s %d: %v messages came from the edges' memory (want --room-cache 0)", r.Path, r.Size, r.FromMemory)
	case r.Path == "direct-get" && r.FromConsumer > 0:
		return fmt.Errorf("direct-get %d: %v messages came through a consumer", r.Size, r.FromConsumer)
	case r.Path != "direct-get" && (r.FromConsumer < viaConsumer || r.Completed < float64(r.Resumes)):
		return fmt.Errorf("%s %d: %v of %d messages came through a consumer (want at least %v), %v of %d long resumes completed",
			r.Path, r.Size, r.FromConsumer, r.Messages, viaConsumer, r.Completed, r.Resumes)
	}
	return nil
}

// settle waits a moment for the edges' counters of a phase whose last
// message the client already has: an edge counts a replay after sending
// it. The CPU times stay those taken right after the phase.
func (m *Mesh) settle(ctx context.Context, before replaySnap, row *ReplayRow, maxRecover int) error {
	deadline := time.Now().Add(3 * time.Second)
	for {
		err := row.checkPath(maxRecover)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
		after, serr := m.replaySnapshot(ctx)
		if serr != nil {
			return serr
		}
		d := after.minus(before)
		row.FromConsumer, row.Replayed, row.FromMemory, row.Completed = d.FromConsumer, d.Replayed, d.FromMemory, d.Completed
	}
}

// maxStalls is how many stalled resumes a phase retries before it fails.
const maxStalls = 20

// resumeTimeout bounds one resume: far beyond what 100,000 messages take,
// and beyond a replay consumer's missed-heartbeat reset (2 × 30 s).
const resumeTimeout = 90 * time.Second

// resume sends a sub with the since that leaves exactly size of the room's
// messages (seqs, ascending) missing, reads until the last of them, checks
// every one arrived once and in order, then unsubscribes. It returns the
// time from the sub to the last message.
func resume(ctx context.Context, c *rawConn, id *int64, room string, seqs []uint64, size int, unsub bool) (time.Duration, error) {
	want := seqs[len(seqs)-size:]
	var since uint64
	if len(seqs) > size {
		since = seqs[len(seqs)-size-1]
	} else {
		since = want[0] - 1
	}
	ctx, cancel := context.WithTimeout(ctx, resumeTimeout)
	defer cancel()
	*id++
	subID := *id
	start := time.Now()
	if err := c.send(request{ID: subID, Op: "sub", Room: room, Since: &since}); err != nil {
		return 0, err
	}
	replied, got := false, 0
	var took time.Duration
	for got < len(want) {
		l, err := nextWithin(ctx, c, stallAfter)
		if err != nil {
			return 0, fmt.Errorf("after %d of %d messages: %w", got, len(want), err)
		}
		switch {
		case l.ID == subID:
			if !l.OK || l.Recovered == nil || !*l.Recovered {
				return 0, fmt.Errorf("sub since %d: reply %+v (want ok, recovered:true)", since, l)
			}
			replied = true
		case l.Op == "msg" && l.Room == room:
			if !replied {
				return 0, errors.New("a message before the sub's reply")
			}
			if l.Seq == nil || *l.Seq != want[got] {
				return 0, fmt.Errorf("message %d of %d: seq %v, want %d (a loss, duplicate or reorder)", got+1, len(want), l.Seq, want[got])
			}
			got++
			if got == len(want) {
				took = time.Since(start)
			}
		}
	}
	if !unsub {
		return took, nil
	}
	*id++
	if err := c.send(request{ID: *id, Op: "unsub", Room: room}); err != nil {
		return 0, err
	}
	for {
		l, err := next(ctx, c)
		if err != nil {
			return 0, fmt.Errorf("unsub: %w", err)
		}
		switch {
		case l.ID == *id:
			if !l.OK {
				return 0, fmt.Errorf("unsub: reply %+v", l)
			}
			return took, nil
		case l.Op == "msg" && l.Room == room:
			return 0, fmt.Errorf("seq %v after the last missed message (nothing was published)", l.Seq)
		}
	}
}

func next(ctx context.Context, c *rawConn) (line, error) {
	return nextWithin(ctx, c, 0)
}

// errStalled: a resume's edge sent nothing for stallAfter while messages
// were owed (the edge neither delivered nor closed the connection).
var errStalled = errors.New("stalled")

// stallAfter is how long a resume may go without a line: a replay sends
// thousands a second.
const stallAfter = 10 * time.Second

// nextWithin is next, giving up with errStalled after within (0: never).
func nextWithin(ctx context.Context, c *rawConn, within time.Duration) (line, error) {
	var stall <-chan time.Time
	if within > 0 {
		t := time.NewTimer(within)
		defer t.Stop()
		stall = t.C
	}
	select {
	case <-stall:
		return line{}, fmt.Errorf("%w: nothing for %v", errStalled, within)
	case l, ok := <-c.lines:
		if !ok {
			return line{}, fmt.Errorf("connection ended (%s)", c.how)
		}
		if l.Error != nil {
			return l, fmt.Errorf("error %s: %s", l.Error.Code, l.Error.Message)
		}
		return l, nil
	case <-ctx.Done():
		return line{}, ctx.Err()
	}
}

// replayBurst has clients resume size messages each at one moment, spread
// over the edges, and times them from the common start.
func (m *Mesh) replayBurst(ctx context.Context, run, room string, seqs []uint64, clients, size int) (ReplayRow, replaySnap, error) {
	urls := m.EdgeURLs()
	conns := make([]*rawConn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.close()
			}
		}
	}()
	for i := range conns {
		c, err := dialRaw(ctx, urls[i%len(urls)], fmt.Sprintf("%s-burst-%d", run, i))
		if err != nil {
			return ReplayRow{}, replaySnap{}, err
		}
		conns[i] = c
	}
	before, err := m.replaySnapshot(ctx)
	if err != nil {
		return ReplayRow{}, replaySnap{}, err
	}
	lat := make([]time.Duration, clients)
	errs := make([]error, clients)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			<-gate
			var id int64
			lat[i], errs[i] = resume(ctx, c, &id, room, seqs, size, false)
		})
	}
	start := time.Now()
	close(gate)
	wg.Wait()
	wall := time.Since(start)
	stalls := 0
	for i, err := range errs {
		if errors.Is(err, errStalled) {
			stalls++
			errs[i] = nil
			lat[i] = -1
		}
	}
	if err := errors.Join(errs...); err != nil {
		return ReplayRow{}, replaySnap{}, fmt.Errorf("burst: %w", err)
	}
	lat = slices.DeleteFunc(lat, func(d time.Duration) bool { return d < 0 })
	if len(lat) == 0 {
		return ReplayRow{}, replaySnap{}, fmt.Errorf("burst: all %d resumes stalled", clients)
	}
	after, err := m.replaySnapshot(ctx)
	if err != nil {
		return ReplayRow{}, replaySnap{}, err
	}
	row := after.minus(before)
	slices.Sort(lat)
	row.Path, row.Size, row.Resumes, row.Messages, row.Latencies, row.Stalls = "burst", size, len(lat), len(lat)*size, lat, stalls
	// Completed when the last message arrived: the slowest resume.
	row.Busy, row.Slowest = lat[len(lat)-1], lat[len(lat)-1]
	if row.Busy <= 0 {
		row.Busy = wall
	}
	return row, before, nil
}

// fillRoom publishes n messages to room (and one to other for every nine,
// the first before any of room's) through the edges, pipelined, and
// returns the stream sequences of room's, ascending.
func fillRoom(ctx context.Context, m *Mesh, room, other string, n, payload int) ([]uint64, error) {
	pad := strings.Repeat("x", max(payload, 0))
	urls := m.EdgeURLs()
	const conns, window = 6, 64
	var mu sync.Mutex
	var seqs []uint64
	errs := make([]error, conns+1)
	// publish sends one message to each of targets, at most window in
	// flight, retrying one that fails with its msg_id (as docs/protocol.md
	// tells a client: the cluster may still be electing right after it
	// formed), and records the sequences of room's.
	type pub struct{ room, msgID string }
	publish := func(k int, c *rawConn, targets []string) error {
		var queue []pub
		for i, r := range targets {
			queue = append(queue, pub{r, fmt.Sprintf("f%d-%d", k, i)})
		}
		inflight := map[int64]pub{}
		var id int64
		retries := 0
		fctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		for len(queue) > 0 || len(inflight) > 0 {
			for len(queue) > 0 && len(inflight) < window {
				id++
				p := queue[0]
				queue = queue[1:]
				inflight[id] = p
				if err := c.send(request{ID: id, Op: "pub", Room: p.room, MsgID: p.msgID, Data: map[string]string{"pad": pad}}); err != nil {
					return err
				}
			}
			l, err := next(fctx, c)
			p, ok := inflight[l.ID]
			if l.ID == 0 || !ok {
				if err != nil {
					return err
				}
				continue
			}
			delete(inflight, l.ID)
			if err != nil || !l.OK || l.Seq == nil {
				if retries++; retries > 1000 {
					return fmt.Errorf("publish: %+v: %v", l, err)
				}
				time.Sleep(10 * time.Millisecond)
				queue = append(queue, p)
				continue
			}
			if p.room == room {
				mu.Lock()
				seqs = append(seqs, *l.Seq)
				mu.Unlock()
			}
		}
		return nil
	}
	// One message of the other room first, so that the longest resume's
	// since is a real sequence, not 0.
	c, err := dialRaw(ctx, urls[0], room+"-fill")
	if err != nil {
		return nil, err
	}
	err = publish(conns, c, []string{other})
	c.close()
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for k := range conns {
		share := n / conns
		if k < n%conns {
			share++
		}
		wg.Go(func() {
			c, err := dialRaw(ctx, urls[k%len(urls)], fmt.Sprintf("%s-fill-%d", room, k))
			if err != nil {
				errs[k] = err
				return
			}
			defer c.close()
			var targets []string
			for i := range share {
				targets = append(targets, room)
				if i%9 == 8 {
					targets = append(targets, other)
				}
			}
			errs[k] = publish(k, c, targets)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.Sort(seqs)
	if len(seqs) != n || len(slices.Compact(slices.Clone(seqs))) != n {
		return nil, fmt.Errorf("%d acks (distinct: %d), want %d", len(seqs), len(slices.Compact(slices.Clone(seqs))), n)
	}
	return seqs, nil
}

// consumers describes the chat stream's consumers (for a stall's report).
func (m *Mesh) consumers(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := m.js.Stream(ctx, pjs.ChatStream)
	if err != nil {
		return err.Error()
	}
	var out []string
	l := st.ListConsumers(ctx)
	for ci := range l.Info() {
		leader := ""
		if ci.Cluster != nil {
			leader = ci.Cluster.Leader
		}
		out = append(out, fmt.Sprintf("%s (filter %v, start %d, delivered stream seq %d, pending %d, waiting pulls %d, leader %s)",
			ci.Name, ci.Config.FilterSubjects, ci.Config.OptStartSeq, ci.Delivered.Stream, ci.NumPending, ci.NumWaiting, leader))
	}
	if err := l.Err(); err != nil {
		out = append(out, err.Error())
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "; ")
}

// replaySnap is the processes' CPU and the edges' replay counters at one
// moment.
type replaySnap struct {
	edgeCPU, natsCPU                              float64
	fromConsumer, replayed, fromMemory, completed float64
}

func (a replaySnap) minus(b replaySnap) ReplayRow {
	return ReplayRow{
		EdgeCPU: a.edgeCPU - b.edgeCPU, NATSCPU: a.natsCPU - b.natsCPU,
		FromConsumer: a.fromConsumer - b.fromConsumer, Replayed: a.replayed - b.replayed,
		FromMemory: a.fromMemory - b.fromMemory, Completed: a.completed - b.completed,
	}
}

func (m *Mesh) replaySnapshot(ctx context.Context) (replaySnap, error) {
	var s replaySnap
	for _, n := range m.nodes {
		cpu, err := procCPU(n.pid())
		if err != nil {
			return s, fmt.Errorf("%s: %w", n.name, err)
		}
		s.natsCPU += cpu
	}
	for _, e := range m.edges {
		cpu, err := procCPU(e.pid())
		if err != nil {
			return s, fmt.Errorf("%s: %w", e.id, err)
		}
		s.edgeCPU += cpu
		met, err := scrape(ctx, "http://"+hostPort(e.port)+"/metrics")
		if err != nil {
			return s, fmt.Errorf("%s: %w", e.id, err)
		}
		s.fromConsumer += met["parley_edge_replayed_from_consumer_total"]
		s.replayed += met["parley_edge_replayed_messages_total"]
		s.fromMemory += met["parley_edge_replayed_from_memory_total"]
		s.completed += met[`parley_edge_replays_total{result="completed"}`]
	}
	return s, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go runs on.
const clockTicks = 100

// procCPU is the user + system CPU seconds of a process so far, from
// /proc/<pid>/stat (Linux).
func procCPU(pid int) (float64, error) {
	if pid == 0 {
		return 0, errors.New("not running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// utime and stime are fields 14 and 15, the 12th and 13th after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(u+s) / clockTicks, nil
}

// scrape reads a Prometheus text page into series → value (the series
// with its labels as written, e.g. `name{result="completed"}`).
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		t := sc.Text()
		if t == "" || t[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(t, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(t[i+1:], 64); err == nil {
			out[t[:i]] = v
		}
	}
	return out, sc.Err()
}

// ReplayTable renders rows as the table docs/benchmarks.md shows.
func ReplayTable(rows []ReplayRow) string {
	var b strings.Builder
	fmt.Fprintln(&b, "| path | messages per resume | resumes | messages/s | ms per resume | edge CPU s / 1,000 msgs | NATS CPU s / 1,000 msgs | resumes/s | stalled |")
	fmt.Fprintln(&b, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		perResume := r.Busy.Seconds() * 1000 / float64(r.Resumes)
		rps := ""
		if r.Path == "burst" {
			perResume = r.Latencies[len(r.Latencies)/2].Seconds() * 1000
			rps = fmt.Sprintf("%.1f", r.ResumesPerSecond())
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %.0f | %.1f | %.4f | %.4f | %s | %d |\n", r.Path, r.Size, r.Resumes,
			r.PerSecond(), perResume, r.EdgePer1000(), r.NATSPer1000(), rps, r.Stalls)
	}
	return b.String()
}
