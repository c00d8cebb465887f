package edge

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/parley-mesh/parley/internal/protocol"
	pjs "github.com/parley-mesh/parley/jetstream"
)

const broadcastTopic = pjs.BroadcastSubject

func dmTopic(user string) string { return pjs.DMSubject(user) }

// subscribe handles "sub": join the room's live feed, reply with the room's
// position, then deliver every message after it.
func (c *Conn) subscribe(req *protocol.Request) error {
	if err := protocol.CheckName("room", req.Room); err != nil {
		return err
	}
	if !c.ident.CanSubscribe(req.Room) {
		return fmt.Errorf("%w: your token does not allow subscribing to room %s", protocol.ErrForbidden, req.Room)
	}
	if _, ok := c.rooms[req.Room]; ok {
		return fmt.Errorf("%w: already subscribed to room %s", protocol.ErrBadRequest, req.Room)
	}
	if len(c.rooms) >= c.e.cfg.MaxSubscriptions {
		return fmt.Errorf("%w: at most %d subscriptions per connection", protocol.ErrForbidden, c.e.cfg.MaxSubscriptions)
	}
	if req.Since != nil || req.Last != nil {
		return fmt.Errorf("%w: resume with since/last is not available on this edge yet", protocol.ErrUnavailable)
	}
	topic := pjs.RoomSubject(req.Room)
	r, err := c.e.hub.Join(topic, c, c.e.cfg.MaxQueuedMsgs)
	if err != nil {
		return err
	}
	seq, known := r.position()
	if !known {
		ctx, cancel := context.WithTimeout(context.Background(), c.e.cfg.RequestTimeout)
		seq, err = c.e.feed.LastSeq(ctx, topic)
		cancel()
		if err != nil {
			c.e.hub.Leave(r, c)
			return err
		}
	}
	reply, err := json.Marshal(protocol.Reply{ID: req.ID, OK: true, Room: req.Room, Seq: &seq})
	if err != nil {
		c.e.hub.Leave(r, c)
		return fmt.Errorf("%w: %w", protocol.ErrInternal, err)
	}
	c.rooms[req.Room] = r
	c.e.metrics.Subscriptions.Inc()
	if !r.start(c, seq, reply) {
		c.close(protocol.CloseSlowConsumer, "slow consumer: outbound queue overflowed; reconnect and resume with since")
	}
	return nil
}

func (c *Conn) unsubscribe(req *protocol.Request) error {
	if err := protocol.CheckName("room", req.Room); err != nil {
		return err
	}
	r, ok := c.rooms[req.Room]
	if !ok {
		return fmt.Errorf("%w: not subscribed to room %s", protocol.ErrNotFound, req.Room)
	}
	delete(c.rooms, req.Room)
	c.e.hub.Leave(r, c)
	c.e.metrics.Subscriptions.Dec()
	c.reply(protocol.Reply{ID: req.ID, OK: true})
	return nil
}

func (c *Conn) history(req *protocol.Request) error {
	if err := protocol.CheckName("room", req.Room); err != nil {
		return err
	}
	return fmt.Errorf("%w: history is not available on this edge yet", protocol.ErrUnavailable)
}

// publish handles "pub": validate, then hand the message to JetStream
// without waiting; the ack is sent when the stream has stored it.
func (c *Conn) publish(req *protocol.Request) error {
	var subject string
	switch {
	case req.Room != "" && req.To != "":
		return fmt.Errorf("%w: pub takes room or to, not both", protocol.ErrBadRequest)
	case req.To != "":
		if err := protocol.CheckName("to", req.To); err != nil {
			return err
		}
		if !c.ident.CanDM() {
			return fmt.Errorf("%w: your token does not allow direct messages", protocol.ErrForbidden)
		}
		subject = pjs.DMSubject(req.To)
	default:
		if err := protocol.CheckName("room", req.Room); err != nil {
			return err
		}
		if !c.ident.CanPublish(req.Room) {
			return fmt.Errorf("%w: your token does not allow publishing to room %s", protocol.ErrForbidden, req.Room)
		}
		subject = pjs.RoomSubject(req.Room)
	}
	if req.MsgID != "" {
		if err := protocol.CheckMsgID(req.MsgID); err != nil {
			return err
		}
	}
	if len(req.Data) == 0 {
		return fmt.Errorf("%w: data is required", protocol.ErrBadRequest)
	}
	if !c.pubLimit.Allow() {
		c.strike()
		return fmt.Errorf("%w: more than %g publishes per second", protocol.ErrRateLimited, c.e.cfg.PublishRate)
	}
	if int(c.inflight.Load()) >= c.e.cfg.MaxInflightPublishes {
		return fmt.Errorf("%w: %d publishes already awaiting acks", protocol.ErrRateLimited, c.e.cfg.MaxInflightPublishes)
	}
	return c.e.pub.publish(c, req.ID, subject, req.MsgID, req.Data)
}
