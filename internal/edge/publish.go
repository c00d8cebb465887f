package edge

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/metrics"
	"github.com/parley-mesh/parley/internal/protocol"
)

// publisher turns client publishes into asynchronous JetStream publishes, so
// many in flight from many clients share the connection without waiting on
// each other's round trips.
type publisher struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	metrics *metrics.Edge
	timeout time.Duration
	// inflight lets a drain wait for every publish to be acked or failed.
	inflight sync.WaitGroup
}

// publish sends one message; the reply reaches c when JetStream answers.
func (p *publisher) publish(c *Conn, id int64, subject, msgID string, data []byte) error {
	if !p.nc.IsConnected() {
		return fmt.Errorf("%w: not connected to NATS; retry with the same msg_id", protocol.ErrUnavailable)
	}
	m := nats.NewMsg(subject)
	m.Data = envelope(c.ident.User, msgID, data)
	if msgID != "" {
		// Dedup ids are scoped to the publisher: a user cannot suppress
		// another's message by reusing its msg_id. Names never hold ':'.
		m.Header.Set(jetstream.MsgIDHeader, c.ident.User+":"+msgID)
	}
	start := time.Now()
	f, err := p.js.PublishMsgAsync(m)
	if err != nil {
		return fmt.Errorf("%w: publish not accepted (%w); retry with the same msg_id", protocol.ErrUnavailable, err)
	}
	c.inflight.Add(1)
	p.inflight.Add(1)
	p.metrics.PublishesPending.Inc()
	go func() {
		defer func() {
			c.inflight.Add(-1)
			p.inflight.Done()
			p.metrics.PublishesPending.Dec()
		}()
		select {
		case ack := <-f.Ok():
			p.metrics.PublishLatency.Observe(time.Since(start).Seconds())
			seq, dup := ack.Sequence, ack.Duplicate
			c.reply(protocol.Reply{ID: id, OK: true, Seq: &seq, Dup: &dup})
			c.count(protocol.OpPub, "ok")
		case err := <-f.Err():
			err = publishError(err)
			c.replyErr(id, err)
			c.count(protocol.OpPub, protocol.ErrorReply(0, err).Error.Code)
		}
	}()
	return nil
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
