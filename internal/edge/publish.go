package edge

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/metrics"
	"github.com/parley-mesh/parley/protocol"
)

// publisher keeps the books of client publishes handed to the backend
// without waiting, so many in flight from many clients share the connection
// without waiting on each other's round trips: which connection and request
// each answer belongs to (by token), the per-connection and per-edge
// bounds, a sweeper that fails what was not acked in time, and the count a
// drain waits for.
type publisher struct {
	backend Backend
	metrics *metrics.Edge
	timeout time.Duration
	max     int // publishes awaiting acks, all connections together
	// tracer, when set, gives each publish a span until its ack (trace.go).
	tracer trace.Tracer
	// active counts publishes not answered yet (under mu); idle is closed
	// when it drops to zero while a drain waits (see wait).
	active int
	idle   chan struct{}
	done   chan struct{}

	mu      sync.Mutex
	next    uint64
	pending map[uint64]pendingPub
}

type pendingPub struct {
	c     *Conn
	id    int64
	start time.Time
	span  trace.Span // nil: not traced
}

// newPublisher starts the sweeper; the backend's acks go to acked.
func newPublisher(m *metrics.Edge, timeout time.Duration, max int) *publisher {
	p := &publisher{metrics: m, timeout: timeout, max: max, done: make(chan struct{}), pending: make(map[uint64]pendingPub)}
	go p.sweep()
	return p
}

// stop ends the sweeper; call after the drain.
func (p *publisher) stop() { close(p.done) }

// publish sends req's message to subject; the reply reaches c when the
// stream answers.
func (p *publisher) publish(c *Conn, req *protocol.Request, subject string) error {
	id, msgID, data := req.ID, req.MsgID, req.Data
	var span trace.Span
	var tc traceHeaders
	if p.tracer != nil || req.Traceparent != "" {
		span, tc = p.startPublish(c, req, subject)
	}
	// A refusal ends the span here; what is handed on ends it with its ack.
	refuse := func(err error) error {
		if span != nil {
			endPublish(span, 0, false, err)
		}
		return err
	}
	if !p.backend.Connected() {
		return refuse(fmt.Errorf("%w: not connected to NATS; retry with the same msg_id", protocol.ErrUnavailable))
	}
	var dedupID string
	if msgID != "" {
		// Dedup ids are scoped to the publisher and the target: a user
		// cannot suppress another's message by reusing its msg_id, and a
		// client numbering its messages per room does not lose the second
		// room's "m-1". Names and subjects never hold ':'.
		dedupID = c.ident.User + ":" + subject + ":" + msgID
	}
	p.mu.Lock()
	// Checked under mu: a drain marks connections draining before it waits
	// (under mu) for active publishes, so a publish is either counted or
	// refused, never stored after the drain stopped waiting.
	if c.draining.Load() {
		p.mu.Unlock()
		return refuse(fmt.Errorf("%w: edge is shutting down; reconnect to another edge", protocol.ErrUnavailable))
	}
	if len(p.pending) >= p.max {
		p.mu.Unlock()
		return refuse(fmt.Errorf("%w: the edge has %d publishes awaiting acks; retry with the same msg_id", protocol.ErrUnavailable, p.max))
	}
	p.next++
	token := p.next
	p.pending[token] = pendingPub{c: c, id: id, start: time.Now(), span: span}
	c.inflight.Add(1)
	p.active++
	p.mu.Unlock()
	p.metrics.PublishesPending.Inc()
	if err := p.backend.Publish(token, subject, dedupID, envelope(c.ident.User, msgID, data), tc); err != nil {
		if pp, ok := p.take(token); ok {
			p.finish(pp, err)
		}
	}
	return nil
}

// take removes a pending publish; false if it was already answered.
func (p *publisher) take(token uint64) (pendingPub, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pp, ok := p.pending[token]
	if ok {
		delete(p.pending, token)
	}
	return pp, ok
}

// acked is the backend's answer to one publish (Backend.Publish).
func (p *publisher) acked(token, seq uint64, dup bool, err error) {
	pp, ok := p.take(token)
	if !ok {
		return // answered already (timed out)
	}
	if err == nil {
		pp.c.reply(protocol.Reply{ID: pp.id, OK: true, Seq: &seq, Dup: &dup})
	}
	if pp.span != nil {
		endPublish(pp.span, seq, dup, err)
		pp.span = nil
	}
	p.finish(pp, err)
}

// finish accounts for one answered publish; with err it replies first. The
// reply is queued before the drain can see the publish as done, so a drain
// never closes a connection ahead of the answer it owes.
func (p *publisher) finish(pp pendingPub, err error) {
	if pp.span != nil { // not acked: refused by the backend, or timed out
		endPublish(pp.span, 0, false, err)
	}
	if err != nil {
		pp.c.replyErr(pp.id, err)
		pp.c.count(protocol.OpPub, protocol.ErrorReply(0, err).Error.Code)
	} else {
		p.metrics.PublishLatency.Observe(time.Since(pp.start).Seconds())
		pp.c.count(protocol.OpPub, "ok")
	}
	pp.c.inflight.Add(-1)
	p.metrics.PublishesPending.Dec()
	p.mu.Lock()
	p.active--
	if p.active == 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
	p.mu.Unlock()
}

// wait returns when every publish has been answered, or with ctx's error.
func (p *publisher) wait(ctx context.Context) error {
	p.mu.Lock()
	if p.active == 0 {
		p.mu.Unlock()
		return nil
	}
	if p.idle == nil {
		p.idle = make(chan struct{})
	}
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sweep fails publishes that got no ack within the timeout: the client is
// told unavailable and may retry with the same msg_id (dedup makes that safe
// if the first attempt was stored after all).
func (p *publisher) sweep() {
	tick := time.NewTicker(max(p.timeout/10, 10*time.Millisecond))
	defer tick.Stop()
	var expired []pendingPub
	for {
		select {
		case <-p.done:
			return
		case now := <-tick.C:
			p.mu.Lock()
			for token, pp := range p.pending {
				if now.Sub(pp.start) > p.timeout {
					delete(p.pending, token)
					expired = append(expired, pp)
				}
			}
			p.mu.Unlock()
			for _, pp := range expired {
				p.finish(pp, fmt.Errorf("%w: no ack within %s; retry with the same msg_id", protocol.ErrUnavailable, p.timeout))
			}
			clear(expired)
			expired = expired[:0]
		}
	}
}

// envelope builds the NATS payload: {"from":…,"msg_id":…,"data":…}.
func envelope(from, msgID string, data []byte) []byte {
	b := make([]byte, 0, len(data)+len(from)+len(msgID)+32)
	b = append(b, `{"from":`...)
	b = protocol.AppendString(b, from)
	if msgID != "" {
		b = append(b, `,"msg_id":`...)
		b = protocol.AppendString(b, msgID)
	}
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return append(b, '}')
}
