package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/tracing"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// natsBackend is the Backend on a NATS connection with JetStream: live
// messages from the stream's RePublish subjects over core subscriptions
// (shared dispatchers, feed.go), stream reads with batched Direct Get (any
// replica answers, no consumer), long replays through ephemeral ordered
// consumers, the archive and presence services by request, and publishes
// with their acks on one inbox subscription.
type natsBackend struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  jetstream.Stream
	name    string        // the stream's name, for Direct Get subjects
	timeout time.Duration // one read's bound
	log     *slog.Logger
	// tracer, when set, gives each traced live message a deliver span
	// (trace.go); nil: tracing is off.
	tracer trace.Tracer
	// archiveSubject is where the archive's history service listens
	// ("": none configured).
	archiveSubject string
	dropped        func() // an undecodable live message was dropped
	// shards buffer live messages (LivePendingMsgs per shard); when one is
	// full nats.go drops and reports a slow consumer, and gap repair reads
	// the dropped messages back from the stream.
	shards *liveShards
	// confirm coalesces the round trips that confirm new subscriptions.
	confirm flushGroup

	// Publishing: every publish carries a reply subject under one inbox,
	// and one subscription receives the stream's acks for all of them. It
	// does what nats.go's async publish does minus a future and a waiting
	// goroutine per message.
	inbox   string // "_INBOX.<nuid>."
	acks    ackFunc
	onPanic func(any) // a panic while handling one ack
	ackSub  *nats.Subscription
}

// startPublishing subscribes to the publish acks; they go to acks.
func (b *natsBackend) startPublishing(acks ackFunc, onPanic func(any)) error {
	b.inbox, b.acks, b.onPanic = nats.NewInbox()+".", acks, onPanic
	sub, err := b.nc.Subscribe(b.inbox+"*", b.ack)
	if err != nil {
		return fmt.Errorf("publish ack subscription: %w", err)
	}
	_ = sub.SetPendingLimits(-1, 64<<20)
	b.ackSub = sub
	return nil
}

// stop ends the live dispatchers and the ack subscription (after the
// drain: every client is gone, nobody is owed a live message or an ack).
func (b *natsBackend) stop() {
	b.shards.stop()
	if b.ackSub != nil {
		_ = b.ackSub.Unsubscribe()
	}
}

func (b *natsBackend) Connected() bool { return b.nc.IsConnected() }

func (b *natsBackend) Subscribe(topic string, deliver func(Delivery)) (func(), error) {
	subject := pjs.LiveSubject(topic)
	handle := b.liveHandler(pushTarget(topic), deliver)
	// A message that reaches the shard before the handler is stored is
	// dropped: it was stored before the caller reads the topic's position
	// (after this returns), so it is not owed to anyone.
	unsubscribe, err := b.shards.subscribe(b.nc, subject, handle)
	if err != nil {
		return nil, fmt.Errorf("%w: subscribe %s: %w", protocol.ErrUnavailable, topic, err)
	}
	// Wait until the server has the subscription: the caller's next step is
	// reading the stream's last sequence, and everything stored after that
	// must arrive here.
	if err := b.confirm.flush(b.nc, 5*time.Second); err != nil {
		unsubscribe()
		return nil, fmt.Errorf("%w: subscribe %s: %w", protocol.ErrUnavailable, topic, err)
	}
	return unsubscribe, nil
}

// flushGroup coalesces the NATS round trips that confirm new subscriptions.
// A connect storm subscribes every connection's user to its DMs and many
// rooms at once; a flush of its own for each (a PING, a timer, a PONG
// waited for) made the round trips, not the work, what bounded the connect
// rate. A caller waits for the first flush that starts after it asked (so
// after its SUB was written: the server has it when the PONG comes back),
// and one flush answers everyone who asked while the previous one was in
// flight. At most one flush is in flight; a caller waits at most two.
type flushGroup struct {
	mu      sync.Mutex
	next    *flushWait // the next flush's callers; nil: none yet
	running bool       // a goroutine is flushing
}

type flushWait struct {
	done chan struct{}
	err  error
}

func (g *flushGroup) flush(nc *nats.Conn, timeout time.Duration) error {
	g.mu.Lock()
	w := g.next
	if w == nil {
		w = &flushWait{done: make(chan struct{})}
		g.next = w
	}
	if !g.running {
		g.running = true
		go g.run(nc, timeout)
	}
	g.mu.Unlock()
	<-w.done
	return w.err
}

func (g *flushGroup) run(nc *nats.Conn, timeout time.Duration) {
	for {
		g.mu.Lock()
		w := g.next
		g.next = nil
		if w == nil {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		w.err = nc.FlushTimeout(timeout)
		close(w.done)
	}
}

// liveHandler is what a topic's live subscription does with each message:
// decode it once and hand it to deliver (the topic's room).
func (b *natsBackend) liveHandler(t target, deliver func(Delivery)) func(*nats.Msg) {
	return func(m *nats.Msg) {
		if b.tracer != nil {
			b.deliverTraced(m, t, deliver)
			return
		}
		if d, ok := b.decodeLive(context.Background(), m, t); ok {
			deliver(d)
		}
	}
}

// decodeLive decodes a live message, or drops it (logged with ctx, which
// carries the message's span when it is traced, and counted).
func (b *natsBackend) decodeLive(ctx context.Context, m *nats.Msg, t target) (Delivery, bool) {
	d, err := decodeLive(m, t)
	if err != nil {
		b.dropped()
		b.log.WarnContext(ctx, "dropping live message", "subject", m.Subject, "err", err)
		return Delivery{}, false
	}
	return d, true
}

// directGet sends one Direct Get request and hands each response message
// to each until it returns false or an error; the request's subscription
// lives only that long. Batched requests answer with several messages and
// end with a status (204 end of batch, 404 nothing matches).
func (b *natsBackend) directGet(ctx context.Context, req any, each func(*nats.Msg) (more bool, err error)) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	inbox := b.nc.NewRespInbox()
	sub, err := b.nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := b.nc.PublishRequest("$JS.API.DIRECT.GET."+b.name, inbox, body); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return err
		}
		if more, err := each(m); err != nil || !more {
			return err
		}
	}
}

func (b *natsBackend) Fetch(ctx context.Context, topic string, from uint64, batch int) ([]Delivery, uint64, error) {
	tgt := pushTarget(topic)
	var out []Delivery
	var pending uint64
	var derr error // a response the edge cannot use, not a transport error
	err := b.directGet(ctx, struct {
		Seq     uint64 `json:"seq"`
		NextFor string `json:"next_by_subj"`
		Batch   int    `json:"batch"`
	}{from, topic, batch}, func(m *nats.Msg) (bool, error) {
		switch m.Header.Get("Status") {
		case "":
		case "204": // end of batch
			return false, nil
		case "404":
			if len(out) == 0 {
				derr = errNoMessages
			}
			pending = 0
			return false, nil
		default:
			derr = fmt.Errorf("%w: read %s: status %s %s", protocol.ErrUnavailable, topic, m.Header.Get("Status"), m.Header.Get("Description"))
			return false, nil
		}
		// Nats-Last-Sequence means something else in a Direct Get reply
		// than in a republished message: it is not kept.
		d, err := decodeLive(m, tgt)
		if err != nil {
			derr = fmt.Errorf("%w: read %s: %w", protocol.ErrInternal, topic, err)
			return false, nil
		}
		d.LastSeq = 0
		pending, _ = strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
		out = append(out, d)
		return true, nil
	})
	switch {
	case err != nil:
		return nil, 0, fmt.Errorf("%w: read %s: %w", protocol.ErrUnavailable, topic, err)
	case derr != nil:
		return nil, 0, derr
	}
	return out, pending, nil
}

// LastSeq asks the stream's leader, not any replica: a position read from a
// replica that trails the leader (back from a pause or a partition) would be
// older than messages already stored, and a subscriber told it would get
// those only when the room's next message showed the gap. Direct Get
// (any replica) serves the reads that can check themselves against the
// position (readFresh).
func (b *natsBackend) LastSeq(ctx context.Context, topic string) (uint64, error) {
	req, _ := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{topic})
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	m, err := b.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+b.name, req)
	if err != nil {
		return 0, fmt.Errorf("%w: read last sequence of %s: %w", protocol.ErrUnavailable, topic, err)
	}
	var resp struct {
		Message *struct {
			Seq uint64 `json:"seq"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, fmt.Errorf("%w: read last sequence of %s: %w", protocol.ErrInternal, topic, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return 0, nil
	case resp.Error != nil:
		return 0, fmt.Errorf("%w: read last sequence of %s: %s", protocol.ErrUnavailable, topic, resp.Error.Description)
	case resp.Message == nil || resp.Message.Seq == 0:
		return 0, fmt.Errorf("%w: last message of %s has no sequence", protocol.ErrInternal, topic)
	}
	return resp.Message.Seq, nil
}

func (b *natsBackend) StreamState(ctx context.Context) (StreamState, error) {
	info, err := b.stream.Info(ctx)
	if err != nil {
		return StreamState{}, fmt.Errorf("%w: stream info: %w", protocol.ErrUnavailable, err)
	}
	st := info.State
	return StreamState{FirstSeq: st.FirstSeq, LastSeq: st.LastSeq, NumDeleted: uint64(st.NumDeleted), Created: info.Created}, nil
}

// Holds reads from..to with batched Direct Get without a subject filter: a
// batch steps over missing sequences, so the first seq that is not the next
// expected one is a hole.
func (b *natsBackend) Holds(ctx context.Context, from, to uint64) (bool, error) {
	for from <= to {
		held, stop := true, false
		err := b.directGet(ctx, struct {
			Seq   uint64 `json:"seq"`
			Batch uint64 `json:"batch"`
		}{from, min(to-from+1, batchLimit)}, func(m *nats.Msg) (bool, error) {
			switch m.Header.Get("Status") {
			case "":
			case "204": // end of batch (short of what was asked when bytes ran out)
				return false, nil
			case "404": // nothing stored from here on
				held = false
				return false, nil
			default:
				return false, fmt.Errorf("status %s %s", m.Header.Get("Status"), m.Header.Get("Description"))
			}
			seq, err := strconv.ParseUint(m.Header.Get(pjs.HeaderSequence), 10, 64)
			if err != nil {
				return false, errors.New("no sequence header")
			}
			if seq != from {
				held = false
				return false, nil
			}
			if from++; from > to {
				stop = true
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return false, fmt.Errorf("read the stream from seq %d: %w", from, err)
		}
		if !held || stop {
			return held, nil
		}
	}
	return true, nil
}

func (b *natsBackend) OpenCursor(ctx context.Context, topic string, after uint64, inactive time.Duration) (Cursor, error) {
	octx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	cons, err := b.js.OrderedConsumer(octx, b.name, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{topic},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       after + 1,
		InactiveThreshold: inactive,
		MaxResetAttempts:  replayResets,
		Metadata:          map[string]string{"parley": "edge long resume"},
	})
	if err != nil {
		return nil, fmt.Errorf("create the replay consumer: %w", err)
	}
	c := &natsCursor{js: b.js, stream: b.name, cons: cons, target: pushTarget(topic), timeout: b.timeout}
	it, err := cons.Messages(jetstream.PullMaxMessages(replayPull))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read the replay consumer: %w", err)
	}
	c.it = it
	// Next has no context of its own (it takes a timeout): stopping the
	// iterator is what ends a Next when the replay is cancelled.
	c.unhook = context.AfterFunc(ctx, it.Stop)
	return c, nil
}

// natsCursor is an ephemeral ordered consumer on one subject.
type natsCursor struct {
	js      jetstream.JetStream
	stream  string
	cons    jetstream.Consumer
	it      jetstream.MessagesContext
	unhook  func() bool // unregisters the stop-on-cancel hook
	target  target
	timeout time.Duration // for deleting it
}

func (c *natsCursor) Next(wait time.Duration) (Delivery, error) {
	m, err := c.it.Next(jetstream.NextMaxWait(wait))
	if errors.Is(err, nats.ErrTimeout) {
		return Delivery{}, errCursorIdle
	}
	if err != nil {
		return Delivery{}, err
	}
	md, err := m.Metadata()
	if err != nil {
		return Delivery{}, fmt.Errorf("%w: replayed message: %w", protocol.ErrInternal, err)
	}
	// A consumer's message has its sequence and time in the reply
	// subject's metadata, not in headers.
	seq := md.Sequence.Stream
	return Delivery{Seq: seq, Frame: encodeStored(seq, md.Timestamp.UnixMilli(), m.Data(), m.Headers(), c.target)}, nil
}

// Close stops reading and deletes the consumer: an ordered consumer's Stop
// leaves it on the server until its inactivity threshold, and a client that
// leaves mid-replay must not leave one behind.
func (c *natsCursor) Close() {
	if c.unhook != nil {
		c.unhook()
	}
	if c.it != nil {
		c.it.Stop()
	}
	if info := c.cons.CachedInfo(); info != nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		// Best effort: the inactivity threshold removes it otherwise.
		_ = c.js.DeleteConsumer(ctx, c.stream, info.Name)
		cancel()
	}
}

// ArchiveHistory asks the archivers' history service (contract in
// docs/archiver.md); no responders is the normal state of a mesh without
// archivers.
func (b *natsBackend) ArchiveHistory(ctx context.Context, req pjs.ArchiveHistoryRequest) (*pjs.ArchiveHistoryResponse, error) {
	if b.archiveSubject == "" {
		return nil, errNoArchive
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	m, err := b.nc.RequestWithContext(ctx, b.archiveSubject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, errNoArchive
	}
	if err != nil {
		return nil, err
	}
	var resp pjs.ArchiveHistoryResponse
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, fmt.Errorf("archive response: %w", err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("archive: %s: %s", resp.Error.Code, resp.Error.Message)
	}
	return &resp, nil
}

// PresenceQuery asks whichever presence worker answers first.
func (b *natsBackend) PresenceQuery(ctx context.Context, q pjs.PresenceQuery) (*pjs.PresenceQueryReply, error) {
	body, _ := json.Marshal(q)
	req := &nats.Msg{Subject: pjs.PresenceQuerySubject, Data: body}
	if trace.SpanContextFromContext(ctx).IsValid() {
		// The worker continues the query's trace (docs/tracing.md).
		req.Header = nats.Header{}
		tracing.Inject(ctx, req.Header)
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	m, err := b.nc.RequestMsgWithContext(ctx, req)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("%w: no presence service is running", protocol.ErrUnavailable)
	case err != nil:
		return nil, fmt.Errorf("%w: presence service did not answer: %w", protocol.ErrUnavailable, err)
	}
	var r pjs.PresenceQueryReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return nil, fmt.Errorf("%w: undecodable presence reply: %w", protocol.ErrInternal, err)
	}
	if r.Error != nil {
		return nil, fmt.Errorf("%w: presence service: %s", protocol.ErrUnavailable, r.Error.Message)
	}
	return &r, nil
}

func (b *natsBackend) Publish(token uint64, subject, dedupID string, data []byte, tc traceHeaders) error {
	m := nats.NewMsg(subject)
	m.Data = data
	if dedupID != "" {
		m.Header.Set(jetstream.MsgIDHeader, dedupID)
	}
	if tc.parent != "" {
		// The stream stores headers with the message and RePublish passes
		// them on: edges, archivers and backend services all read the
		// trace from here.
		m.Header.Set(tracing.HeaderTraceparent, tc.parent)
		if tc.state != "" {
			m.Header.Set(tracing.HeaderTracestate, tc.state)
		}
	}
	m.Reply = b.inbox + strconv.FormatUint(token, 10)
	if err := b.nc.PublishMsg(m); err != nil {
		return fmt.Errorf("%w: publish not accepted (%w); retry with the same msg_id", protocol.ErrUnavailable, err)
	}
	return nil
}

// ack handles the stream's answer to one publish (on nats.go's subscription
// goroutine, where a panic would end the process).
func (b *natsBackend) ack(m *nats.Msg) {
	defer func() {
		if v := recover(); v != nil && b.onPanic != nil {
			b.onPanic(v)
		}
	}()
	token, err := strconv.ParseUint(m.Subject[len(b.inbox):], 10, 64)
	if err != nil {
		return
	}
	if m.Header.Get("Status") == "503" {
		b.acks(token, 0, false, fmt.Errorf("%w: no stream answered; retry with the same msg_id", protocol.ErrUnavailable))
		return
	}
	var a pubAck
	switch err := a.decode(m.Data); {
	case err != nil:
		b.acks(token, 0, false, fmt.Errorf("%w: undecodable ack: %w", protocol.ErrInternal, err))
	case a.Error != nil:
		b.acks(token, 0, false, publishError(a.Error))
	case a.Seq == 0:
		b.acks(token, 0, false, fmt.Errorf("%w: ack without a sequence", protocol.ErrInternal))
	default:
		b.acks(token, a.Seq, a.Duplicate, nil)
	}
}

// pubAck is JetStream's answer to a publish.
type pubAck struct {
	Seq       uint64              `json:"seq"`
	Duplicate bool                `json:"duplicate"`
	Error     *jetstream.APIError `json:"error"`
}

// decode reads an ack; the common {"stream":…,"seq":…} by hand (one per
// client publish), anything else with encoding/json.
func (a *pubAck) decode(b []byte) error {
	s := protocol.Scanner{B: b}
	ok := s.Fields(func(key []byte) bool {
		switch string(key) {
		case "stream", "domain":
			_, ok := s.Str()
			return ok
		case "seq":
			n, ok := s.Uint()
			a.Seq = n
			return ok
		case "duplicate":
			start := s.I
			ok := s.Skip()
			a.Duplicate = string(b[start:s.I]) == "true"
			return ok
		}
		return false
	})
	if ok {
		return nil
	}
	*a = pubAck{}
	return json.Unmarshal(b, a)
}

// publishError maps a failed JetStream publish to a protocol error. Only a
// stored message is acknowledged, so every failure is safe to retry.
func publishError(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		if apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
			return fmt.Errorf("%w: message exceeds the stream's maximum size", protocol.ErrTooLarge)
		}
		return fmt.Errorf("%w: stream refused the message: %s", protocol.ErrUnavailable, apiErr.Description)
	}
	return fmt.Errorf("%w: publish not confirmed (%w); retry with the same msg_id", protocol.ErrUnavailable, err)
}

// errNoArchive: no archive is configured or none answered.
var errNoArchive = errors.New("no archive answering")
