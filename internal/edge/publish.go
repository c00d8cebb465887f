package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/metrics"
	"github.com/parley-mesh/parley/protocol"
)

// publisher turns client publishes into asynchronous JetStream publishes, so
// many in flight from many clients share the connection without waiting on
// each other's round trips. It does what nats.go's async publish does, minus
// a future and a waiting goroutine per message: every publish carries a reply
// subject under one inbox, one subscription receives the stream's acks, and
// a sweeper fails what was not acked in time.
type publisher struct {
	nc      *nats.Conn
	metrics *metrics.Edge
	timeout time.Duration
	max     int // publishes awaiting acks, all connections together
	// active counts publishes not answered yet (under mu); idle is closed
	// when it drops to zero while a drain waits (see wait).
	active int
	idle   chan struct{}

	inbox string // reply subject prefix, "_INBOX.<nuid>."
	// onPanic hears of a panic while handling one ack (it runs on nats.go's
	// subscription goroutine, where a panic would end the process).
	onPanic func(any)
	sub     *nats.Subscription
	done    chan struct{}

	mu      sync.Mutex
	next    uint64
	pending map[uint64]pendingPub
}

type pendingPub struct {
	c     *Conn
	id    int64
	start time.Time
}

func newPublisher(nc *nats.Conn, m *metrics.Edge, timeout time.Duration, max int, onPanic func(any)) (*publisher, error) {
	p := &publisher{nc: nc, metrics: m, timeout: timeout, max: max, onPanic: onPanic, inbox: nats.NewInbox() + ".",
		done: make(chan struct{}), pending: make(map[uint64]pendingPub)}
	sub, err := nc.Subscribe(p.inbox+"*", p.ack)
	if err != nil {
		return nil, fmt.Errorf("publish ack subscription: %w", err)
	}
	_ = sub.SetPendingLimits(-1, 64<<20)
	p.sub = sub
	go p.sweep()
	return p, nil
}

// stop ends the sweeper; call after the drain.
func (p *publisher) stop() {
	close(p.done)
	_ = p.sub.Unsubscribe()
}

// publish sends one message; the reply reaches c when JetStream answers.
func (p *publisher) publish(c *Conn, id int64, subject, msgID string, data []byte) error {
	if !p.nc.IsConnected() {
		return fmt.Errorf("%w: not connected to NATS; retry with the same msg_id", protocol.ErrUnavailable)
	}
	m := nats.NewMsg(subject)
	m.Data = envelope(c.ident.User, msgID, data)
	if msgID != "" {
		// Dedup ids are scoped to the publisher and the target: a user
		// cannot suppress another's message by reusing its msg_id, and a
		// client numbering its messages per room does not lose the second
		// room's "m-1". Names and subjects never hold ':'.
		m.Header.Set(jetstream.MsgIDHeader, c.ident.User+":"+subject+":"+msgID)
	}
	p.mu.Lock()
	// Checked under mu: a drain marks connections draining before it waits
	// (under mu) for active publishes, so a publish is either counted or
	// refused, never stored after the drain stopped waiting.
	if c.draining.Load() {
		p.mu.Unlock()
		return fmt.Errorf("%w: edge is shutting down; reconnect to another edge", protocol.ErrUnavailable)
	}
	if len(p.pending) >= p.max {
		p.mu.Unlock()
		return fmt.Errorf("%w: the edge has %d publishes awaiting acks; retry with the same msg_id", protocol.ErrUnavailable, p.max)
	}
	p.next++
	token := p.next
	p.pending[token] = pendingPub{c: c, id: id, start: time.Now()}
	c.inflight.Add(1)
	p.active++
	p.mu.Unlock()
	p.metrics.PublishesPending.Inc()
	m.Reply = p.inbox + strconv.FormatUint(token, 10)
	if err := p.nc.PublishMsg(m); err != nil {
		if pp, ok := p.take(token); ok {
			p.finish(pp, fmt.Errorf("%w: publish not accepted (%w); retry with the same msg_id", protocol.ErrUnavailable, err))
			return nil
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

// ack handles the stream's answer to one publish.
func (p *publisher) ack(m *nats.Msg) {
	defer func() {
		if v := recover(); v != nil && p.onPanic != nil {
			p.onPanic(v)
		}
	}()
	token, err := strconv.ParseUint(m.Subject[len(p.inbox):], 10, 64)
	if err != nil {
		return
	}
	pp, ok := p.take(token)
	if !ok {
		return // answered already (timed out)
	}
	if m.Header.Get("Status") == "503" {
		p.finish(pp, fmt.Errorf("%w: no stream answered; retry with the same msg_id", protocol.ErrUnavailable))
		return
	}
	var ack pubAck
	if err := ack.decode(m.Data); err != nil {
		p.finish(pp, fmt.Errorf("%w: undecodable ack: %w", protocol.ErrInternal, err))
		return
	}
	if ack.Error != nil {
		p.finish(pp, publishError(ack.Error))
		return
	}
	if ack.Seq == 0 {
		p.finish(pp, fmt.Errorf("%w: ack without a sequence", protocol.ErrInternal))
		return
	}
	pp.c.reply(protocol.Reply{ID: pp.id, OK: true, Seq: &ack.Seq, Dup: &ack.Duplicate})
	p.finish(pp, nil)
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

// finish accounts for one answered publish; with err it replies first. The
// reply is queued before the drain can see the publish as done, so a drain
// never closes a connection ahead of the answer it owes.
func (p *publisher) finish(pp pendingPub, err error) {
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
