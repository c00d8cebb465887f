package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
	"golang.org/x/time/rate"
)

const broadcastTopic = pjs.BroadcastSubject

func dmTopic(user string) string { return pjs.DMSubject(user) }

// subscribe handles "sub": join the room's live feed (held back while we
// work), find the room's position, replay what the client asked for from the
// stream, reply, then release the live feed from the position on. Nothing
// is lost or repeated at the seam: live messages at or below the position
// are dropped, those above it were held back and follow the replay. A long
// resume (replay.go) is replayed after the reply from a goroutine of its
// own, paced by the connection's queue, and releases the live feed when it
// has caught up.
func (c *Conn) subscribe(req *protocol.Request) error {
	return c.subscribeRoom(req, encodeSubReply)
}

// subReply encodes a subscribe's reply and the messages sent with it
// (replayed, nil for a long resume: its messages follow from the replay) as
// the frames to queue, in order. Each client protocol of the edge (Parley's,
// Centrifugo's) has one; everything else about a subscribe is shared, so
// both see the same room in the same order with the same resume guarantees.
type subReply func(reply *protocol.Reply, replayed []Delivery) ([][]byte, error)

// encodeSubReply is the Parley protocol's: the reply, then the messages'
// push frames as they are.
func encodeSubReply(reply *protocol.Reply, replayed []Delivery) ([][]byte, error) {
	b, err := protocol.MarshalReply(reply)
	if err != nil {
		return nil, err
	}
	frames := make([][]byte, 0, 1+len(replayed))
	frames = append(frames, b)
	for _, d := range replayed {
		frames = append(frames, d.Frame)
	}
	return frames, nil
}

// subscribeRoom is a subscribe for either protocol; encode builds its reply.
func (c *Conn) subscribeRoom(req *protocol.Request, encode subReply) error {
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
	if req.Last != nil && *req.Last < 0 {
		return fmt.Errorf("%w: last must not be negative", protocol.ErrBadRequest)
	}
	if req.Last != nil && *req.Last == 0 { // "last":0 is no last at all
		req.Last = nil
	}
	if req.Since != nil && req.Last != nil {
		return fmt.Errorf("%w: sub takes since or last, not both", protocol.ErrBadRequest)
	}
	began := time.Now()
	topic := pjs.RoomSubject(req.Room)
	r, err := c.e.hub.Join(topic, c, c.e.cfg.MaxQueuedMsgs)
	if err != nil {
		return err
	}
	ctx, cancel := c.workCtx(2 * c.e.cfg.RequestTimeout)
	defer cancel()
	seq, known := r.position()
	if !known {
		if seq, err = c.e.backend.LastSeq(ctx, topic); err != nil {
			c.e.hub.Leave(r, c)
			return err
		}
		seq = r.learn(seq)
	}
	reply := protocol.Reply{ID: req.ID, OK: true, Room: req.Room, Seq: &seq}
	var plan *resumePlan
	if req.Since != nil || req.Last != nil {
		plan, err = c.recover(ctx, r, seq, req, &reply)
		if err == nil && plan != nil && plan.long {
			err = c.acquireReplay(ctx)
		}
		if err != nil {
			c.e.metrics.Recoveries.WithLabelValues("failed").Inc()
			c.e.hub.Leave(r, c)
			return err
		}
		if req.Last != nil && plan != nil {
			// A replay larger than the connection's queue could hold would
			// close it as a slow consumer, and the client's retry would do
			// the same again: keep the newest that fit in half the queue.
			budget := c.e.cfg.MaxQueuedBytes / 2
			if fit := newestWithin(plan.msgs, budget); len(fit) < len(plan.msgs) {
				plan.msgs = fit
				*reply.Recovered = false
				reply.Reason = fmt.Sprintf("the messages asked for exceed %d bytes; the newest %d follow, read older ones with history", budget, len(fit))
			}
		}
		result := "recovered"
		if !*reply.Recovered {
			result = "not_recovered"
		}
		c.e.metrics.Recoveries.WithLabelValues(result).Inc()
		c.e.metrics.RecoverySeconds.Observe(time.Since(began).Seconds())
	}
	var replayed []Delivery
	if plan != nil && !plan.long {
		replayed = plan.msgs
	}
	frames, err := encode(&reply, replayed)
	if err != nil {
		if plan != nil && plan.long {
			c.e.releaseReplay()
		}
		c.e.hub.Leave(r, c)
		return fmt.Errorf("%w: %w", protocol.ErrInternal, err)
	}
	c.rooms[req.Room] = r
	c.e.presence.joined(c, req.Room)
	c.e.metrics.Subscriptions.Inc()
	if plan != nil && plan.long {
		// The reply first: the member is syncing, so nothing of the room
		// reaches the connection before it.
		for _, f := range frames {
			c.deliver(f)
		}
		c.startReplay(r, req.Room, *req.Since, seq, plan)
		return nil
	}
	if plan != nil {
		c.e.metrics.Replayed.Add(float64(len(plan.msgs)))
	}
	// Live messages after seq follow; but a client resuming from beyond it
	// (it saw newer ones live on another edge) has those already.
	floor := seq
	if req.Since != nil && *req.Since > seq && reply.Recovered != nil && *reply.Recovered {
		floor = *req.Since
	}
	if !r.start(c, floor, frames...) {
		c.close(protocol.CloseSlowConsumer, "slow consumer: outbound queue overflowed; reconnect and resume with since")
	}
	return nil
}

// recover plans what a resuming subscriber asked for, up to the room's
// position upTo, and fills in the reply's recovered and reason. A plan of
// at most MaxRecover messages within half the connection's queue (and every
// last) is read whole and sent with the reply. A longer resume is long: what
// was read (the archive's part, and the stream's up to the byte budget)
// goes first, then the stream is read on through an ordered consumer.
func (c *Conn) recover(ctx context.Context, r *room, upTo uint64, req *protocol.Request, reply *protocol.Reply) (*resumePlan, error) {
	topic := r.topic
	recovered := true
	reply.Recovered = &recovered
	max := c.e.cfg.MaxRecover
	if req.Last != nil {
		n := min(*req.Last, max)
		if n == 0 || upTo == 0 {
			return nil, nil
		}
		if ds, ok := r.latest(n, upTo); ok {
			c.e.metrics.ReplayedFromMemory.Add(float64(len(ds)))
			return &resumePlan{msgs: ds, complete: true}, nil
		}
		ds, _, err := readFresh(ctx, upTo, func() ([]Delivery, bool, error) {
			ds, err := c.e.reader.latest(ctx, topic, upTo+1, n, 0)
			return ds, false, err
		})
		if err != nil {
			return nil, err
		}
		ds, missing := c.historyFromArchive(ctx, req.Room, upTo+1, n, ds)
		if missing != "" {
			recovered = false
			reply.Reason = missing
		}
		return &resumePlan{msgs: ds, complete: true}, nil
	}
	since := *req.Since
	if since >= upTo {
		if since > upTo {
			// Beyond the room's newest: this edge may just not have seen
			// the latest yet (the client got it live elsewhere), unless the
			// stream itself never got that far: then it was reset, and
			// the client's position means nothing any more.
			st, err := c.e.backend.StreamState(ctx)
			if err != nil {
				return nil, err
			}
			if last := st.LastSeq; since > last {
				recovered = false
				reply.Reason = fmt.Sprintf("since %d is beyond the stream's last sequence %d: the stream was reset; your position is now the reply's seq", since, last)
			}
		}
		return nil, nil
	}
	// Sent with the reply, a replay lands in the connection's queue at once:
	// beyond half of it, it goes paced instead.
	budget := c.e.cfg.MaxQueuedBytes / 2
	if ds, ok := r.since(since, upTo, max); ok {
		c.e.metrics.ReplayedFromMemory.Add(float64(len(ds)))
		return &resumePlan{msgs: ds, complete: true, long: frameBytes(ds) > budget}, nil
	}
	replay, more, err := readFresh(ctx, upTo, func() ([]Delivery, bool, error) {
		return c.e.reader.readRange(ctx, topic, since+1, upTo, max)
	})
	if err != nil {
		return nil, err
	}
	before := upTo + 1 // the oldest of the room's messages after since in the stream
	if len(replay) > 0 {
		before = replay[0].Seq
	}
	lost, err := c.maybeLost(ctx, topic, since, before)
	if err != nil {
		return nil, err
	}
	var older []Delivery // from the archive: what left the stream
	if lost {
		ds, all, ok := c.recoverFromArchive(ctx, req.Room, since, before-1, nil, max)
		switch {
		case !ok:
			recovered = false
			reply.Reason = fmt.Sprintf("the stream no longer holds every message after seq %d; what it still has follows", since)
		case !all:
			recovered = false
			reply.Reason = fmt.Sprintf("more than %d of the missed messages left the stream; the newest %d of those follow, then all the stream holds; read older ones with history", max, len(ds))
		}
		older = ds
	}
	plan := &resumePlan{complete: !more}
	plan.long = more || len(older)+len(replay) > max || frameBytes(older)+frameBytes(replay) > budget
	if plan.long {
		// What waits for its turn in the replay stays within the budget:
		// the rest of the stream's part is read again, through the consumer.
		if kept := prefixWithin(replay, budget-frameBytes(older)); len(kept) < len(replay) {
			replay, plan.complete = kept, false
		}
	}
	plan.msgs = append(older, replay...)
	return plan, nil
}

// readFresh runs a read of a room's messages up to upTo, the room's
// position, again for a little while when it stops short of upTo, which is
// one of the room's messages (its newest, or the predecessor of a live one).
// Any replica answers a Direct Get, and one that trails the leader (back
// from a pause, a restart, a partition) does not have the newest yet: taken
// as it is, such a read would skip what lies between it and the position
// the subscriber is told. A read that still stops short (the messages left
// the stream) is returned as it is for the caller to judge.
func readFresh(ctx context.Context, upTo uint64, read func() ([]Delivery, bool, error)) ([]Delivery, bool, error) {
	for attempt := 0; ; attempt++ {
		ds, more, err := read()
		if err != nil || more || upTo == 0 || (len(ds) > 0 && ds[len(ds)-1].Seq >= upTo) || attempt == 4 {
			return ds, more, err
		}
		select {
		case <-time.After(time.Duration(attempt+1) * 50 * time.Millisecond):
		case <-ctx.Done():
			return ds, more, err
		}
	}
}

// frameBytes is the size of ds's frames.
func frameBytes(ds []Delivery) int {
	n := 0
	for _, d := range ds {
		n += len(d.Frame)
	}
	return n
}

// prefixWithin is the longest head of ds whose frames fit in budget bytes.
func prefixWithin(ds []Delivery, budget int) []Delivery {
	i := 0
	for i < len(ds) && budget >= len(ds[i].Frame) {
		budget -= len(ds[i].Frame)
		i++
	}
	return ds[:i]
}

// newestWithin is the longest tail of ds whose frames fit in budget bytes.
func newestWithin(ds []Delivery, budget int) []Delivery {
	i := len(ds)
	for i > 0 && budget >= len(ds[i-1].Frame) {
		budget -= len(ds[i-1].Frame)
		i--
	}
	return ds[i:]
}

// maybeLost reports whether messages of topic after seq since may have
// left the stream; before is the topic's oldest stored message after since
// (or the position + 1: none). It rests on the stream removing a topic's
// messages oldest first only (limits, purges by subject, keep or sequence;
// the chat stream denies single-message deletes and per-message TTLs, see
// jetstream/streams.go): if the topic's oldest stored message is at or
// before since+1, nothing after since is gone; if not, something is gone
// unless the stream never removed anything after since.
func (c *Conn) maybeLost(ctx context.Context, topic string, since, before uint64) (bool, error) {
	if before <= since+1 { // the stream holds the very next sequence
		return false, nil
	}
	first, err := c.e.reader.first(ctx, topic)
	if err != nil {
		return false, err
	}
	if first != 0 && first <= since+1 {
		return false, nil
	}
	st, err := c.e.backend.StreamState(ctx)
	if err != nil {
		return false, err
	}
	return st.FirstSeq > since+1 || st.NumDeleted > 0, nil
}

func (c *Conn) unsubscribe(req *protocol.Request) error {
	if err := protocol.CheckName("room", req.Room); err != nil {
		return err
	}
	r, ok := c.rooms[req.Room]
	if !ok {
		return fmt.Errorf("%w: not subscribed to room %s", protocol.ErrNotFound, req.Room)
	}
	c.leaveRoom(req.Room, r)
	c.reply(protocol.Reply{ID: req.ID, OK: true})
	return nil
}

// leaveRoom ends the connection's subscription to room (unsub, or a
// refreshed token that no longer grants it).
func (c *Conn) leaveRoom(room string, r *room) {
	if rp := c.replays[room]; rp != nil {
		// Nothing of the room may follow: end the replay first.
		rp.stop()
		delete(c.replays, room)
	}
	delete(c.rooms, room)
	c.e.presence.left(c, room)
	c.e.hub.Leave(r, c)
	c.e.metrics.Subscriptions.Dec()
}

// history handles "history": the newest limit messages before a seq (or
// the newest of all), oldest first, read from the stream without a consumer.
func (c *Conn) history(req *protocol.Request) error {
	if err := protocol.CheckName("room", req.Room); err != nil {
		return err
	}
	if !c.ident.CanSubscribe(req.Room) {
		return fmt.Errorf("%w: your token does not allow reading room %s", protocol.ErrForbidden, req.Room)
	}
	limit := req.Limit
	switch {
	case limit < 0:
		return fmt.Errorf("%w: limit must not be negative", protocol.ErrBadRequest)
	case limit == 0:
		limit = 50
	case limit > c.e.cfg.MaxHistory:
		limit = c.e.cfg.MaxHistory
	}
	ctx, cancel := c.workCtx(2 * c.e.cfg.RequestTimeout)
	defer cancel()
	ds, err := c.e.reader.latest(ctx, pjs.RoomSubject(req.Room), req.Before, limit, 0)
	if err != nil {
		return err
	}
	// What the stream no longer has comes from the archive; a reply that
	// may have skipped messages neither holds says so.
	ds, missing := c.historyFromArchive(ctx, req.Room, req.Before, limit, ds)
	// Keep the reply within bounds: drop the oldest beyond the byte budget
	// (and within half the connection's queue, which a larger reply would
	// overflow); the client pages on with before = the oldest seq it got.
	reply := protocol.Reply{ID: req.ID, OK: true, Reason: missing}
	budget := min(c.e.cfg.MaxHistoryBytes, c.e.cfg.MaxQueuedBytes/2)
	if fit := newestWithin(ds, budget); len(fit) < len(ds) {
		cut := fmt.Sprintf("cut to the newest %d messages that fit in %d bytes; page back with before", len(fit), budget)
		if reply.Reason != "" {
			cut += "; " + reply.Reason
		}
		reply.Reason = cut
		ds = fit
	}
	reply.Msgs = make([]json.RawMessage, len(ds)) // never nil: "msgs":[] when empty
	for i, d := range ds {
		reply.Msgs[i] = d.Frame
	}
	c.e.metrics.HistoryRequests.Inc()
	c.reply(reply)
	return nil
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
	if c.pubLimit == nil {
		c.pubLimit = rate.NewLimiter(rate.Limit(c.e.cfg.PublishRate), c.e.cfg.PublishBurst)
	}
	if !c.pubLimit.Allow() {
		c.strike()
		return fmt.Errorf("%w: more than %g publishes per second", protocol.ErrRateLimited, c.e.cfg.PublishRate)
	}
	if int(c.inflight.Load()) >= c.e.cfg.MaxInflightPublishes {
		return fmt.Errorf("%w: %d publishes already awaiting acks", protocol.ErrRateLimited, c.e.cfg.MaxInflightPublishes)
	}
	return c.e.pub.publish(c, req, subject)
}
