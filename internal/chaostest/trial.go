//go:build unix

package chaostest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// Config is a run of trials on one mesh.
type Config struct {
	Trials int
	// Faults are the kinds to inject (default AllFaults). Trials take them
	// in shuffled rounds, so every kind comes once per len(Faults) trials.
	Faults []FaultKind
	// Seed makes the schedule (faults, victims, timings) repeatable; the
	// interleavings with the processes are not. 0 picks one.
	Seed uint64
	// Clients per trial. Defaults: 3 publishers, 3 raw subscribers (and
	// one more that joins mid-trial), 2 Go-client subscribers, 3 rooms.
	Publishers, RawSubscribers, GoSubscribers, Rooms int
	// PublishFor is how long publishers publish (default 3 s); they go on
	// until the fault has been undone and a little after.
	PublishFor time.Duration
	// Out gets one line per trial (and its violations).
	Out io.Writer
	Log *slog.Logger
}

func (c *Config) fill() {
	if c.Trials <= 0 {
		c.Trials = 12
	}
	if len(c.Faults) == 0 {
		c.Faults = AllFaults()
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	setIf := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	setIf(&c.Publishers, 3)
	setIf(&c.RawSubscribers, 3)
	setIf(&c.GoSubscribers, 2)
	setIf(&c.Rooms, 3)
	if c.PublishFor <= 0 {
		c.PublishFor = 3 * time.Second
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// newRand is a generator seeded from one number, so a run's seed
// reproduces its schedule.
func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

// Schedule is the fault of each trial: shuffled rounds of kinds.
func Schedule(trials int, kinds []FaultKind, rng *rand.Rand) []FaultKind {
	var out []FaultKind
	for len(out) < trials {
		round := append([]FaultKind(nil), kinds...)
		rng.Shuffle(len(round), func(i, j int) { round[i], round[j] = round[j], round[i] })
		out = append(out, round...)
	}
	return out[:trials]
}

// RunTrials runs cfg.Trials trials on m, one fault each, healing the mesh
// between them. It stops early only when the mesh cannot be healed or ctx
// ends; violations are in the summary, not in the error.
func RunTrials(ctx context.Context, m *Mesh, cfg Config) (*Summary, error) {
	cfg.fill()
	rng := newRand(cfg.Seed)
	fmt.Fprintf(cfg.Out, "chaos: %d trials, seed %d, faults %v\n", cfg.Trials, cfg.Seed, cfg.Faults)
	sum := &Summary{}
	for i, kind := range Schedule(cfg.Trials, cfg.Faults, rng) {
		began := time.Now()
		res := runTrial(ctx, m, &cfg, i+1, kind, newRand(rng.Uint64()))
		took := time.Since(began)
		if ctx.Err() != nil {
			// The run's deadline (or an interrupt) cut this trial short:
			// it proves nothing either way, so it is not counted.
			fmt.Fprintf(cfg.Out, "trial %d %s: cut short by the end of the run, not counted (%.1fs)\n", i+1, kind, took.Seconds())
			return sum, ctx.Err()
		}
		herr := m.heal(ctx, 60*time.Second)
		// A process that dies while the mesh heals (an edge that cannot
		// start) counts against the trial that left the mesh so.
		for _, c := range m.crashes() {
			res.Anomalies++
			res.Violations = append(res.Violations, "anomaly: after the trial: "+c)
		}
		fmt.Fprintf(cfg.Out, "%s (%.1fs)\n", res.Line(), took.Seconds())
		for _, v := range res.Violations {
			fmt.Fprintf(cfg.Out, "    %s\n", v)
		}
		sum.Results = append(sum.Results, res)
		if herr != nil {
			return sum, fmt.Errorf("trial %d (%s): the mesh did not heal: %w", i+1, kind, herr)
		}
		if ctx.Err() != nil {
			return sum, ctx.Err()
		}
	}
	return sum, nil
}

// Run builds the binaries (unless cfg gives them), starts a mesh in dir,
// runs the trials and stops everything.
func Run(ctx context.Context, dir string, bin Binaries, mc MeshConfig, cfg Config) (*Summary, error) {
	if bin.NATS == "" || bin.Edge == "" {
		var err error
		if bin, err = Build(ctx, dir, false); err != nil {
			return nil, err
		}
	}
	mc.Dir, mc.Bin = dir, bin
	m, err := StartMesh(ctx, mc)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	return RunTrials(ctx, m, cfg)
}

// runTrial is one trial in fresh rooms: subscribers first, then
// publishers, the fault at a random moment, publishing until the fault is
// undone, then waiting for every subscriber to catch up, and the check.
func runTrial(ctx context.Context, m *Mesh, cfg *Config, n int, kind FaultKind, rng *rand.Rand) Result {
	// Every trial ends within 2 minutes whatever happens.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res := Result{Trial: n, Fault: kind}
	prefix := fmt.Sprintf("t%d-%04x", n, rng.IntN(1<<16))
	var rooms []string
	for i := range cfg.Rooms {
		rooms = append(rooms, fmt.Sprintf("%s-r%d", prefix, i))
	}
	// Subscriber i leaves out room i (when there are several), so rooms
	// differ in who listens and connections hold several rooms.
	roomsOf := func(i int) []string {
		if len(rooms) < 2 {
			return rooms
		}
		var out []string
		for j, r := range rooms {
			if j != i%len(rooms) {
				out = append(out, r)
			}
		}
		return out
	}
	urls := m.EdgeURLs()
	rec := NewRecorder()
	logs := m.logOffsets()
	m.witness.reset(prefix + "-")
	child := func() *rand.Rand { return newRand(rng.Uint64()) }

	subCtx, stopSubs := context.WithCancel(ctx)
	var subs sync.WaitGroup
	defer func() { // on every return: no client outlives its trial
		stopSubs()
		subs.Wait()
	}()
	var names []string
	for i := range cfg.RawSubscribers {
		s := newRawSubscriber(fmt.Sprintf("%s-raw%d", prefix, i), roomsOf(i), urls, rec, child())
		names = append(names, s.name)
		subs.Go(func() { s.run(subCtx) })
	}
	for i := range cfg.GoSubscribers {
		g := newGoSubscriber(fmt.Sprintf("%s-go%d", prefix, i), roomsOf(i+1), urls, rec, child())
		names = append(names, g.name)
		subs.Go(func() { g.run(subCtx) })
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	err := rec.waitStarted(wctx, names)
	wcancel()
	if err != nil {
		res.Err = fmt.Sprintf("subscribers did not start: %v", err)
		return res
	}

	// Publishers get a hard deadline: a message still unacked then is
	// abandoned (and reported), the trial goes on.
	pubCtx, pubCancel := context.WithTimeout(ctx, 45*time.Second)
	stopPub := make(chan struct{})
	var pubs sync.WaitGroup
	defer func() {
		pubCancel()
		pubs.Wait()
	}()
	for i := range cfg.Publishers {
		p := &publisher{name: fmt.Sprintf("%s-pub%d", prefix, i), rooms: rooms, urls: urls, rec: rec,
			rng: child(), interval: 50 * time.Millisecond}
		pubs.Go(func() { p.run(pubCtx, stopPub) })
	}
	// One subscriber joins while messages flow: it is owed what comes
	// after its first reply's seq, not the room's beginning.
	late := newRawSubscriber(prefix+"-late", rooms, urls, rec, child())
	lateAt := between(rng, 0, cfg.PublishFor)
	subs.Go(func() {
		if sleep(subCtx, lateAt) == nil {
			late.run(subCtx)
		}
	})

	faultAt := between(rng, 200*time.Millisecond, max(cfg.PublishFor-time.Second, 300*time.Millisecond))
	frng := child()
	faultDone := make(chan struct{})
	go func() {
		defer close(faultDone)
		if err := sleep(ctx, faultAt); err != nil {
			res.Err = "fault not injected: " + err.Error()
			return
		}
		detail, err := m.inject(ctx, kind, frng)
		res.Detail = fmt.Sprintf("at %v: %s", faultAt.Round(time.Millisecond), detail)
		if err != nil {
			res.Err = fmt.Sprintf("fault %s: %v", kind, err)
		}
		m.log.Debug("fault", "trial", n, "kind", kind, "detail", res.Detail, "err", err)
	}()

	// Publish for PublishFor, and until a second after the fault was
	// undone, so every trial also shows the mesh working again.
	_ = sleep(ctx, cfg.PublishFor)
	<-faultDone // inject is bounded by ctx
	_ = sleep(ctx, time.Second)
	close(stopPub)
	pubs.Wait()

	// What the subscribers are owed: everything stored in the rooms so
	// far. Wait for them to have it, bounded.
	stored, err := readStream(ctx, m.js, rooms)
	if err != nil {
		res.Err = fmt.Sprintf("read the stream: %v", err)
		return res
	}
	targets := lastSeqs(stored)
	cctx, ccancel := context.WithTimeout(ctx, 15*time.Second)
	behind := rec.waitCaughtUp(cctx, targets)
	ccancel()
	stopSubs()
	subs.Wait()
	for _, b := range behind {
		m.log.Debug("behind at the end", "trial", n, "who", b)
	}
	// Read again: a publish abandoned at the deadline may have been stored
	// since; the stream checks cover it (subscribers are owed targets).
	if again, err := readStream(ctx, m.js, rooms); err == nil {
		stored = again
	}
	for _, c := range m.crashes() {
		rec.anomaly("%s", c)
	}
	check := Check(rec, stored, targets)
	check.Trial, check.Fault, check.Detail, check.Err = res.Trial, res.Fault, res.Detail, res.Err
	check.EdgeLog = m.edgeLogSince(logs)
	var nodes []string
	for _, nd := range m.nodes {
		nodes = append(nodes, nd.name)
	}
	check.RepublishMissed = m.witness.missed(nodes, stored)
	return check
}

// waitStarted waits until every named subscriber has a sub reply in each of
// its rooms.
func (r *Recorder) waitStarted(ctx context.Context, names []string) error {
	for {
		r.mu.Lock()
		missing := ""
		for _, n := range names {
			for room, rl := range r.subs[n].rooms {
				if !rl.started {
					missing = n + " in " + room
				}
			}
		}
		r.mu.Unlock()
		if missing == "" {
			return nil
		}
		select {
		case <-r.changed:
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", missing, ctx.Err())
		}
	}
}

func lastSeqs(stored []StoredMsg) map[string]uint64 {
	t := map[string]uint64{}
	for _, m := range stored {
		t[m.Room] = max(t[m.Room], m.Seq)
	}
	return t
}

// readStream reads every stored message of the rooms with an ordered
// consumer, retrying while the cluster settles.
func readStream(ctx context.Context, js jetstream.JetStream, rooms []string) ([]StoredMsg, error) {
	var out []StoredMsg
	err := retry(ctx, 30*time.Second, func(ctx context.Context) error {
		var err error
		out, err = readOnce(ctx, js, rooms)
		return err
	})
	return out, err
}

func readOnce(ctx context.Context, js jetstream.JetStream, rooms []string) ([]StoredMsg, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	subjects := make([]string, len(rooms))
	for i, r := range rooms {
		subjects[i] = pjs.RoomSubject(r)
	}
	cons, err := js.OrderedConsumer(ctx, pjs.ChatStream, jetstream.OrderedConsumerConfig{FilterSubjects: subjects})
	if err != nil {
		return nil, err
	}
	var out []StoredMsg
	for {
		batch, err := cons.Fetch(512, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, err
		}
		got, done := 0, false
		for msg := range batch.Messages() {
			got++
			meta, err := msg.Metadata()
			if err != nil {
				return nil, err
			}
			var env struct {
				From  string `json:"from"`
				MsgID string `json:"msg_id"`
			}
			_ = json.Unmarshal(msg.Data(), &env)
			out = append(out, StoredMsg{
				Seq: meta.Sequence.Stream, Room: msg.Subject()[len(pjs.RoomPrefix):],
				From: env.From, MsgID: env.MsgID, DedupID: msg.Headers().Get(jetstream.MsgIDHeader),
			})
			if meta.NumPending == 0 {
				done = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		if done || got == 0 {
			break
		}
	}
	// An empty fetch proves nothing while the cluster settles: the stream
	// must agree on how many messages each room holds.
	s, err := js.Stream(ctx, pjs.ChatStream)
	if err != nil {
		return nil, err
	}
	have := map[string]uint64{}
	for _, m := range out {
		have[pjs.RoomSubject(m.Room)]++
	}
	for _, subj := range subjects {
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			return nil, err
		}
		if want := info.State.Subjects[subj]; want != have[subj] {
			return nil, fmt.Errorf("read %d messages of %s, the stream holds %d", have[subj], subj, want)
		}
	}
	return out, nil
}
