//go:build unix

package chaostest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Ack is a publish the edge acknowledged.
type Ack struct {
	Publisher, Room, MsgID string
	Seq                    uint64
	Dup                    bool
}

// SubReply is a successful reply to a sub: on which connection, what was
// asked (Since nil: a plain sub) and what the edge answered. DeliveredBefore
// is how many of the room's messages the subscriber had received before it,
// which places the reply among the deliveries.
type SubReply struct {
	Conn            int
	Edge            string // the edge's URL (raw subscribers)
	Since           *uint64
	Seq             uint64
	Recovered       *bool
	Reason          string
	DeliveredBefore int
}

// Delivery is one msg push as a subscriber received it.
type Delivery struct {
	Conn  int
	Seq   uint64
	MsgID string
	From  string
}

// StoredMsg is one message read back from the stream at the end of a trial.
type StoredMsg struct {
	Seq     uint64
	Room    string
	From    string // the publisher (the envelope's from)
	MsgID   string // the publisher's msg_id (the envelope's msg_id)
	DedupID string // Nats-Msg-Id
}

// Recorder is what the clients of one trial saw. It is safe for concurrent
// use; the checker reads it once the clients have stopped.
type Recorder struct {
	mu        sync.Mutex
	acks      []Ack
	pubErrors map[string]int
	// pubSamples keeps the first message of each publish error code.
	pubSamples map[string]string
	abandoned  []string
	subErrors  map[string]int
	closes     map[string]int
	anomalies  []string
	subs       map[string]*subLog
	// changed is signalled (without blocking) on every delivery, so the
	// trial can wait for subscribers to catch up without polling.
	changed chan struct{}
}

type subLog struct {
	name       string
	goClient   bool
	rooms      map[string]*roomLog
	clientDups uint64 // duplicates the Go client dropped itself
}

type roomLog struct {
	started    bool   // a first sub reply arrived
	first      uint64 // its position: messages after it are owed
	pos        uint64 // the highest seq handled (or first)
	replies    []SubReply
	deliveries []Delivery
	lost       []string // Go client "lost" events (reasons)
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	return &Recorder{
		pubErrors: map[string]int{}, pubSamples: map[string]string{}, subErrors: map[string]int{}, closes: map[string]int{},
		subs: map[string]*subLog{}, changed: make(chan struct{}, 1),
	}
}

func (r *Recorder) addSubscriber(name string, goClient bool, rooms []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &subLog{name: name, goClient: goClient, rooms: map[string]*roomLog{}}
	for _, room := range rooms {
		s.rooms[room] = &roomLog{}
	}
	r.subs[name] = s
}

func (r *Recorder) ack(a Ack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acks = append(r.acks, a)
}

func (r *Recorder) pubError(code, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pubErrors[code]++
	if _, ok := r.pubSamples[code]; !ok && message != "" {
		r.pubSamples[code] = message
	}
}

func (r *Recorder) abandon(msgID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.abandoned = append(r.abandoned, msgID)
}

func (r *Recorder) subError(code string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subErrors[code]++
}

// disconnected counts how a client's connection ended (close code or
// "network").
func (r *Recorder) disconnected(how string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closes[how]++
}

// anomaly records something the protocol document says cannot happen.
func (r *Recorder) anomaly(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.anomalies = append(r.anomalies, fmt.Sprintf(format, args...))
}

func (r *Recorder) room(sub, room string) *roomLog {
	s := r.subs[sub]
	if s == nil {
		return nil
	}
	return s.rooms[room]
}

func (r *Recorder) subReply(sub, room string, rep SubReply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rl := r.room(sub, room)
	if rl == nil {
		return
	}
	rep.DeliveredBefore = len(rl.deliveries)
	rl.replies = append(rl.replies, rep)
	if !rl.started {
		rl.started, rl.first = true, rep.Seq
		rl.pos = max(rl.pos, rep.Seq)
	}
	r.signal()
}

func (r *Recorder) deliver(sub, room string, d Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rl := r.room(sub, room)
	if rl == nil {
		r.anomalies = append(r.anomalies, fmt.Sprintf("%s got seq %d of room %s it never subscribed to", sub, d.Seq, room))
		return
	}
	rl.deliveries = append(rl.deliveries, d)
	rl.pos = max(rl.pos, d.Seq)
	r.signal()
}

func (r *Recorder) lost(sub, room, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rl := r.room(sub, room); rl != nil {
		rl.lost = append(rl.lost, reason)
	}
}

func (r *Recorder) clientDuplicates(sub string, n uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.subs[sub]; s != nil {
		s.clientDups = n
	}
}

func (r *Recorder) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// behind lists the subscribers whose position in a room is below target.
func (r *Recorder) behind(targets map[string]uint64) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, name := range slices.Sorted(maps.Keys(r.subs)) {
		for room, rl := range r.subs[name].rooms {
			if t := targets[room]; rl.pos < t {
				out = append(out, fmt.Sprintf("%s in %s at %d of %d", name, room, rl.pos, t))
			}
		}
	}
	return out
}

// waitCaughtUp waits until every subscriber has reached targets (room →
// seq) or ctx ends; it returns who is still behind.
func (r *Recorder) waitCaughtUp(ctx context.Context, targets map[string]uint64) []string {
	for {
		b := r.behind(targets)
		if len(b) == 0 {
			return nil
		}
		select {
		case <-r.changed:
		case <-ctx.Done():
			return b
		}
	}
}

// Result is the checker's verdict on one trial.
type Result struct {
	Trial  int
	Fault  FaultKind
	Detail string // what exactly the fault did
	Err    string // the harness failed (the trial proves nothing)

	Acked     int // distinct messages acknowledged
	DupAcks   int // acks that said dup:true (a retry of a stored message)
	Stored    int // messages of the trial's rooms in the stream
	Abandoned int // never acknowledged despite retries until the deadline
	Checked   int // (subscriber, owed message) pairs checked

	SilentLosses   int // owed, not delivered, not inside a hole the subscriber was told about
	HiddenByResume int // of those: inside a replay that said recovered:true
	Duplicates     int // delivered again (incl. those the Go client dropped)
	Reorders       int // delivered below a seq already delivered
	ToldHoles      int // owed, not delivered, inside a recovered:false hole
	StoredTwice    int // one msg_id stored more than once
	AckedNotStored int // acked seq missing from the stream, or holding another message
	AckMismatch    int // acks of one msg_id with different seqs
	Phantoms       int // delivered but not in the stream (or not the stored message)
	Anomalies      int // protocol promises broken in other ways (see Violations)

	PubErrors map[string]int
	// PubErrorSamples is the first message of each publish error code.
	PubErrorSamples map[string]string
	SubErrors       map[string]int
	Closes          map[string]int
	// EdgeLog counts the edges' warnings and errors during the trial.
	EdgeLog map[string]int
	// RepublishMissed counts, per NATS node, the trial's stored messages
	// that a plain subscriber on that node never got from RePublish (a
	// node that was down misses what was stored meanwhile). Edges must
	// repair these; it is not a violation by itself.
	RepublishMissed map[string]int
	// Violations describe every failure above, a few per kind.
	Violations []string
}

// Failed reports whether the trial broke a promise.
func (r *Result) Failed() bool {
	return r.Err != "" || r.SilentLosses+r.Duplicates+r.Reorders+r.StoredTwice+r.AckedNotStored+
		r.AckMismatch+r.Phantoms+r.Anomalies > 0
}

// maxViolationLines bounds the detail kept per kind of violation.
const maxViolationLines = 5

type violations struct {
	lines []string
	per   map[string]int
}

func (v *violations) add(kind, format string, args ...any) {
	if v.per == nil {
		v.per = map[string]int{}
	}
	v.per[kind]++
	switch n := v.per[kind]; {
	case n <= maxViolationLines:
		v.lines = append(v.lines, kind+": "+fmt.Sprintf(format, args...))
	case n == maxViolationLines+1:
		v.lines = append(v.lines, kind+": … (more)")
	}
}

// Check judges one trial: what the publishers were told, what the stream
// holds, what each subscriber received. targets are the rooms' last seqs
// the subscribers were waited for; messages after them are not owed.
func Check(rec *Recorder, stored []StoredMsg, targets map[string]uint64) Result {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	res := Result{
		Stored: len(stored), Abandoned: len(rec.abandoned),
		PubErrors: maps.Clone(rec.pubErrors), PubErrorSamples: maps.Clone(rec.pubSamples), SubErrors: maps.Clone(rec.subErrors), Closes: maps.Clone(rec.closes),
	}
	var v violations

	// The stream: every msg_id once.
	bySeq := map[uint64]StoredMsg{}
	byDedup := map[string][]uint64{}
	byRoom := map[string][]StoredMsg{}
	for _, m := range stored {
		bySeq[m.Seq] = m
		key := m.DedupID
		if key == "" {
			key = m.From + "|" + m.Room + "|" + m.MsgID
		}
		byDedup[key] = append(byDedup[key], m.Seq)
		byRoom[m.Room] = append(byRoom[m.Room], m)
	}
	for _, key := range slices.Sorted(maps.Keys(byDedup)) {
		if seqs := byDedup[key]; len(seqs) > 1 {
			res.StoredTwice += len(seqs) - 1
			v.add("stored twice", "msg id %s at seqs %v", key, seqs)
		}
	}
	for _, ms := range byRoom {
		sort.Slice(ms, func(i, j int) bool { return ms[i].Seq < ms[j].Seq })
	}

	// The acks: each acked message is in the stream at the seq it was
	// acked with, and every ack of one msg_id says the same seq.
	type pubKey struct{ pub, room, msgID string }
	ackSeq := map[pubKey]uint64{}
	for _, a := range rec.acks {
		if a.Dup {
			res.DupAcks++
		}
		k := pubKey{a.Publisher, a.Room, a.MsgID}
		if s, ok := ackSeq[k]; ok {
			if s != a.Seq {
				res.AckMismatch++
				v.add("ack mismatch", "%s %s acked as seq %d and as seq %d (dup %v)", a.Publisher, a.MsgID, s, a.Seq, a.Dup)
			}
			continue
		}
		ackSeq[k] = a.Seq
		m, ok := bySeq[a.Seq]
		switch {
		case !ok:
			res.AckedNotStored++
			v.add("acked, not stored", "%s %s in %s acked as seq %d, which the stream does not hold", a.Publisher, a.MsgID, a.Room, a.Seq)
		case m.Room != a.Room || m.MsgID != a.MsgID || m.From != a.Publisher:
			res.AckedNotStored++
			v.add("acked, not stored", "%s %s in %s acked as seq %d, which holds %s %s in %s", a.Publisher, a.MsgID, a.Room, a.Seq, m.From, m.MsgID, m.Room)
		}
	}
	res.Acked = len(ackSeq)

	// The subscribers.
	for _, name := range slices.Sorted(maps.Keys(rec.subs)) {
		s := rec.subs[name]
		if s.clientDups > 0 {
			res.Duplicates += int(s.clientDups)
			v.add("duplicate", "%s (Go client) dropped %d messages at or below a seq it had delivered", name, s.clientDups)
		}
		for _, room := range slices.Sorted(maps.Keys(s.rooms)) {
			checkRoom(&res, &v, rec.acks, name, s.goClient, room, s.rooms[room], byRoom[room], bySeq, targets[room])
		}
	}
	res.Anomalies += len(rec.anomalies)
	for i, a := range rec.anomalies {
		if i == maxViolationLines {
			v.lines = append(v.lines, fmt.Sprintf("anomaly: … (%d in all)", len(rec.anomalies)))
			break
		}
		v.lines = append(v.lines, "anomaly: "+a)
	}
	res.Violations = v.lines
	return res
}

// hole is a range of seqs (from, to] a subscriber was told it lost.
type hole struct{ from, to uint64 }

func (h hole) has(seq uint64) bool { return seq > h.from && seq <= h.to }

// segment is the stretch of a subscription from one sub reply to the next.
type segment struct {
	rep      SubReply
	start    uint64 // the position it owed messages after
	end      uint64 // the highest seq it delivered (or start)
	resumed  bool
	promised bool // recovered:true
}

// ackNote says how a stored message was acked, for violation lines: a
// message first acked as dup:true was acked for a retry, not for the
// attempt that stored it.
func ackNote(acks []Ack, m StoredMsg) string {
	for _, a := range acks {
		if a.Publisher == m.From && a.MsgID == m.MsgID && a.Room == m.Room {
			if a.Dup {
				return ", acked dup:true"
			}
			return ", acked"
		}
	}
	return ", never acked"
}

func checkRoom(res *Result, v *violations, acks []Ack, name string, goClient bool, room string, rl *roomLog, stored []StoredMsg, bySeq map[uint64]StoredMsg, target uint64) {
	if !rl.started {
		res.Anomalies++
		v.add("never subscribed", "%s never got a sub reply for %s", name, room)
		return
	}
	// Deliveries: in stream order, each once, each a stored message.
	seen := map[uint64]bool{}
	top := rl.first
	for _, d := range rl.deliveries {
		m, ok := bySeq[d.Seq]
		if !ok || m.Room != room || m.MsgID != d.MsgID || m.From != d.From {
			res.Phantoms++
			v.add("phantom", "%s got seq %d (%s from %s) in %s, the stream holds %+v", name, d.Seq, d.MsgID, d.From, room, m)
		}
		switch {
		case seen[d.Seq]:
			res.Duplicates++
			v.add("duplicate", "%s got seq %d of %s again (conn %d)", name, d.Seq, room, d.Conn)
		case d.Seq <= top:
			res.Reorders++
			v.add("reorder", "%s got seq %d of %s after seq %d (conn %d)", name, d.Seq, room, top, d.Conn)
		default:
			top = d.Seq
		}
		seen[d.Seq] = true
	}

	// Holes the subscriber was told about: a resume answered
	// recovered:false lost what lies between its since and the first
	// message that followed on that connection (at most the reply's seq).
	var holes []hole
	var segs []segment
	for i, rep := range rl.replies {
		sg := segment{rep: rep, start: rep.Seq, resumed: rep.Since != nil}
		if sg.resumed {
			sg.start = *rep.Since
			sg.promised = rep.Recovered != nil && *rep.Recovered
		}
		next := len(rl.deliveries)
		if i+1 < len(rl.replies) {
			next = rl.replies[i+1].DeliveredBefore
		}
		sg.end = sg.start
		firstAfter := uint64(0)
		for _, d := range rl.deliveries[rep.DeliveredBefore:next] {
			sg.end = max(sg.end, d.Seq)
			if firstAfter == 0 && d.Conn == rep.Conn {
				firstAfter = d.Seq
			}
		}
		if sg.resumed && !sg.promised {
			h := hole{from: *rep.Since, to: rep.Seq}
			if firstAfter > 0 && firstAfter-1 < h.to {
				h.to = firstAfter - 1
			}
			holes = append(holes, h)
		}
		segs = append(segs, sg)
	}
	// The Go client reports a lost resume as an event without its
	// position: each "lost" event excuses one run of missing messages.
	goExcuses := len(rl.lost)

	prevMissing := false
	for _, m := range stored {
		if m.Seq <= rl.first || m.Seq > target {
			continue
		}
		res.Checked++
		if seen[m.Seq] {
			prevMissing = false
			continue
		}
		told := false
		for _, h := range holes {
			if h.has(m.Seq) {
				told = true
			}
		}
		if goClient && !told && (prevMissing || goExcuses > 0) {
			if !prevMissing {
				goExcuses--
			}
			told = true
		}
		prevMissing = true
		if told {
			res.ToldHoles++
			continue
		}
		res.SilentLosses++
		where := "tail: never delivered by the end"
		if goClient {
			where = "Go client"
		}
		for _, sg := range segs {
			if !goClient && m.Seq > sg.start && m.Seq <= sg.end {
				switch {
				case sg.promised && m.Seq <= sg.rep.Seq:
					res.HiddenByResume++
					where = fmt.Sprintf("inside the replay of a resume since %d that said recovered:true (reply seq %d, conn %d)", sg.start, sg.rep.Seq, sg.rep.Conn)
				case sg.resumed:
					where = fmt.Sprintf("live, after a resume since %d (reply seq %d, conn %d)", sg.start, sg.rep.Seq, sg.rep.Conn)
				default:
					where = fmt.Sprintf("live, after a plain sub at %d (conn %d)", sg.rep.Seq, sg.rep.Conn)
				}
				if sg.rep.Edge != "" {
					where += " on " + sg.rep.Edge
				}
			}
		}
		v.add("silent loss", "%s never got seq %d (%s from %s%s) of %s: %s", name, m.Seq, m.MsgID, m.From, ackNote(acks, m), room, where)
	}
}

// Summary aggregates results by fault.
type Summary struct {
	Results []Result
}

// Failed counts trials that broke a promise.
func (s *Summary) Failed() int {
	n := 0
	for i := range s.Results {
		if s.Results[i].Failed() {
			n++
		}
	}
	return n
}

// Line is one trial's report.
func (r *Result) Line() string {
	verdict := "ok"
	if r.Failed() {
		verdict = "FAIL"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "trial %d %s [%s]: acked %d (dup:true %d) stored %d checked %d loss %d dup %d reorder %d told %d",
		r.Trial, r.Fault, r.Detail, r.Acked, r.DupAcks, r.Stored, r.Checked, r.SilentLosses, r.Duplicates, r.Reorders, r.ToldHoles)
	if n := r.StoredTwice + r.AckedNotStored + r.AckMismatch + r.Phantoms + r.Anomalies; n > 0 {
		fmt.Fprintf(&b, " stored-twice %d acked-not-stored %d ack-mismatch %d phantom %d anomalies %d",
			r.StoredTwice, r.AckedNotStored, r.AckMismatch, r.Phantoms, r.Anomalies)
	}
	if r.Abandoned > 0 {
		fmt.Fprintf(&b, " abandoned %d", r.Abandoned)
	}
	fmt.Fprintf(&b, " pub-errors {%s} sub-errors {%s} closes {%s}", counts(r.PubErrors), counts(r.SubErrors), counts(r.Closes))
	if len(r.RepublishMissed) > 0 {
		fmt.Fprintf(&b, " republish-missed {%s}", counts(r.RepublishMissed))
	}
	if len(r.EdgeLog) > 0 {
		fmt.Fprintf(&b, " edge-log {%s}", counts(r.EdgeLog))
	}
	b.WriteString(" " + verdict)
	if r.Err != "" {
		fmt.Fprintf(&b, " (harness: %s)", r.Err)
	}
	return b.String()
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s:%d", k, m[k]))
		}
	}
	return strings.Join(parts, " ")
}

// ErrorSamples lists one message per publish error code seen in the run.
func (s *Summary) ErrorSamples() string {
	seen := map[string]string{}
	for i := range s.Results {
		for code, msg := range s.Results[i].PubErrorSamples {
			if _, ok := seen[code]; !ok {
				seen[code] = msg
			}
		}
	}
	var b strings.Builder
	for _, code := range slices.Sorted(maps.Keys(seen)) {
		fmt.Fprintf(&b, "%s: %s\n", code, seen[code])
	}
	return b.String()
}

// Table is the final report: trials by fault and the totals.
func (s *Summary) Table() string {
	type row struct {
		trials, failed, acked, checked, loss, hidden, dup, reorder, told, other int
		pubErrs                                                                 map[string]int
	}
	rows := map[FaultKind]*row{}
	total := &row{pubErrs: map[string]int{}}
	add := func(r *row, x *Result) {
		r.trials++
		if x.Failed() {
			r.failed++
		}
		r.acked += x.Acked
		r.checked += x.Checked
		r.loss += x.SilentLosses
		r.hidden += x.HiddenByResume
		r.dup += x.Duplicates
		r.reorder += x.Reorders
		r.told += x.ToldHoles
		r.other += x.StoredTwice + x.AckedNotStored + x.AckMismatch + x.Phantoms + x.Anomalies
		for k, n := range x.PubErrors {
			r.pubErrs[k] += n
		}
	}
	for i := range s.Results {
		x := &s.Results[i]
		r := rows[x.Fault]
		if r == nil {
			r = &row{pubErrs: map[string]int{}}
			rows[x.Fault] = r
		}
		add(r, x)
		add(total, x)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| fault | trials | failed | acked | deliveries checked | silent losses | (behind recovered:true) | duplicates | reorders | told holes | other violations | publish errors by code |\n")
	fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	line := func(name string, r *row) {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %d | %s |\n", name, r.trials, r.failed,
			r.acked, r.checked, r.loss, r.hidden, r.dup, r.reorder, r.told, r.other, counts(r.pubErrs))
	}
	for _, k := range slices.Sorted(maps.Keys(rows)) {
		line(string(k), rows[k])
	}
	line("**total**", total)
	return b.String()
}
