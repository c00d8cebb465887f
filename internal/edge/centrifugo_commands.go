package edge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	cfp "github.com/centrifugal/protocol"

	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// handleCentrifugo runs a frame's Centrifugo commands ('\n'-separated JSON,
// or length-delimited Protobuf) in order. A frame that is not commands in
// the connection's format ends the connection with "bad request", as
// Centrifugo does: its SDKs never send one.
func (c *Conn) handleCentrifugo(frame []byte) {
	if c.cf.protobuf {
		c.handleCentrifugoProtobuf(frame)
		return
	}
	if len(bytes.TrimSpace(frame)) == 0 {
		return
	}
	dec := cfp.NewJSONCommandDecoder(frame)
	for {
		cmd, err := dec.Decode()
		if cmd != nil {
			c.cfCommand(cmd)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				c.count("invalid", protocol.CodeBadRequest)
				c.close(cfDisconnectBadRequest, "bad request: malformed command")
			}
			return
		}
		select {
		case <-c.closing:
			return
		default:
		}
	}
}

// cfCommand runs one command and replies.
func (c *Conn) cfCommand(cmd *cfp.Command) {
	if cmd.Id == 0 {
		// An empty command is the pong to a server ping: reading it moved
		// the read deadline, nothing else to do. A send (a message to the
		// server's handler) has no handler here.
		if cmd.Send != nil {
			c.close(cfDisconnectNotAvailable, "not available: send has no handler on this server")
		}
		return
	}
	op := cfOpName(cmd)
	if !c.reqLimit.Allow() {
		c.cfReplyErr(cmd.Id, &cfError{code: cfErrTooMany, msg: fmt.Sprintf("more than %g requests per second", c.e.cfg.RequestRate), temporary: true})
		c.count(op, protocol.CodeRateLimited)
		c.strike()
		return
	}
	if c.draining.Load() {
		c.cfReplyErr(cmd.Id, fmt.Errorf("%w: edge is shutting down; reconnect to another edge", protocol.ErrUnavailable))
		return
	}
	var err error
	switch {
	case cmd.Connect != nil:
		c.close(cfDisconnectBadRequest, "bad request: already connected")
		return
	case cmd.Subscribe != nil:
		err = c.cfSubscribe(cmd.Id, cmd.Subscribe)
	case cmd.Unsubscribe != nil:
		err = c.cfUnsubscribe(cmd.Id, cmd.Unsubscribe)
	case cmd.Publish != nil:
		err = c.cfPublish(cmd.Id, cmd.Publish)
	case cmd.Presence != nil:
		err = c.cfPresence(cmd.Id, cmd.Presence.Channel, false)
	case cmd.PresenceStats != nil:
		err = c.cfPresence(cmd.Id, cmd.PresenceStats.Channel, true)
	case cmd.History != nil:
		err = c.cfHistory(cmd.Id, cmd.History)
	case cmd.Refresh != nil:
		err = c.cfRefresh(cmd.Id, cmd.Refresh)
	case cmd.Ping != nil:
		c.cfReply(&cfp.Reply{Id: cmd.Id, Ping: &cfp.PingResult{}})
	case cmd.Rpc != nil:
		err = &cfError{code: cfErrMethod, msg: "method not found: this server has no RPC handlers"}
	case cmd.SubRefresh != nil:
		err = &cfError{code: cfErrNotAvailable, msg: "not available: subscription tokens are not used; the connection's token grants channels"}
	default:
		c.count("invalid", protocol.CodeBadRequest)
		c.close(cfDisconnectBadRequest, "bad request: unknown command")
		return
	}
	if err != nil {
		c.cfReplyErr(cmd.Id, err)
		c.count(op, protocol.ErrorReply(0, err).Error.Code)
		return
	}
	if op != protocol.OpPub { // a publish is counted when its ack arrives
		c.count(op, "ok")
	}
}

// cfOpName is the Parley op a command counts as in the request metrics.
func cfOpName(cmd *cfp.Command) string {
	switch {
	case cmd.Subscribe != nil:
		return protocol.OpSub
	case cmd.Unsubscribe != nil:
		return protocol.OpUnsub
	case cmd.Publish != nil:
		return protocol.OpPub
	case cmd.Presence != nil, cmd.PresenceStats != nil:
		return protocol.OpPresence
	case cmd.History != nil:
		return protocol.OpHistory
	case cmd.Refresh != nil:
		return protocol.OpRefresh
	case cmd.Ping != nil:
		return protocol.OpPing
	}
	return "invalid"
}

func (c *Conn) cfReply(r *cfp.Reply) {
	b, err := c.cf.encode(r)
	if err != nil {
		c.logger().Error("encode reply", "err", err)
		return
	}
	c.deliver(b)
}

func (c *Conn) cfReplyErr(id uint32, err error) {
	ce := cfErrorOf(err)
	if ce.Code == cfErrInternal && !errors.Is(err, protocol.ErrUnavailable) {
		c.logger().Error("request failed", "err", err)
	}
	c.cfReply(&cfp.Reply{Id: id, Error: ce})
}

// cfReplyParley translates the replies that shared code sends through
// Conn.reply: publish acks (the publisher's, the only OK reply that reaches
// a Centrifugo connection there) and errors. An error without an id is
// about a frame the edge could not take (binary, oversize): Centrifugo has
// no way to say that but closing.
func (c *Conn) cfReplyParley(r protocol.Reply) {
	switch {
	case r.Error != nil && r.ID == 0:
		c.close(cfDisconnectBadRequest, "bad request: "+r.Error.Message)
	case r.Error != nil:
		c.cfReply(&cfp.Reply{Id: uint32(r.ID), Error: cfErrorFor(r.Error.Code, r.Error.Message)})
	default:
		c.cfReply(&cfp.Reply{Id: uint32(r.ID), Publish: &cfp.PublishResult{}})
	}
}

// cfPush translates a Parley push frame (a room's message, presence's join
// or leave, the unsubscribed notice) into Centrifugo's; nil drops it (a
// push Centrifugo has no counterpart for, such as the expiring reminder:
// the SDKs refresh from the connect reply's ttl). Anything not a Parley
// push (Centrifugo replies, the ping) passes as it is: that includes every
// Protobuf reply, whose first byte is a field tag and never '{' (0x7b
// would be field 15 with the group wire type, which Reply does not use).
func (c *Conn) cfPush(frame []byte) []byte {
	if !bytes.HasPrefix(frame, []byte(`{"op":`)) {
		return frame
	}
	var m struct {
		protocol.Msg
		User   string `json:"user"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(frame, &m); err != nil {
		c.logger().Error("translate a push", "err", err)
		return nil
	}
	push := &cfp.Push{Channel: m.Room}
	switch m.Op {
	case protocol.OpMsg:
		pub, channel := cfPublication(&m.Msg)
		if channel == "" { // a broadcast: no Centrifugo channel carries it
			return nil
		}
		push.Channel, push.Pub = channel, pub
	case protocol.OpJoin, protocol.OpLeave:
		if !c.cf.wantsJoinLeave(m.Room) {
			return nil
		}
		info := &cfp.ClientInfo{User: m.User}
		if m.Op == protocol.OpJoin {
			push.Join = &cfp.Join{Info: info}
		} else {
			push.Leave = &cfp.Leave{Info: info}
		}
	case protocol.OpUnsubscribed:
		push.Unsubscribe = &cfp.Unsubscribe{Code: cfUnsubscribeServer, Reason: m.Reason}
	default:
		return nil
	}
	b, err := c.cf.encode(&cfp.Reply{Push: push})
	if err != nil {
		c.logger().Error("translate a push", "err", err)
		return nil
	}
	return b
}

// cfPublication is a Parley message as Centrifugo's publication, and the
// channel it belongs to ("" for a broadcast): the offset is the stream seq,
// the publisher is info.user, a msg_id travels as the tag "msg_id".
func cfPublication(m *protocol.Msg) (*cfp.Publication, string) {
	pub := &cfp.Publication{Data: cfp.Raw(m.Data), Offset: m.Seq, Time: m.TS}
	if len(pub.Data) == 0 {
		pub.Data = cfp.Raw("null")
	}
	if m.From != "" {
		pub.Info = &cfp.ClientInfo{User: m.From}
	}
	if m.MsgID != "" {
		pub.Tags = map[string]string{"msg_id": m.MsgID}
	}
	switch {
	case m.Room != "":
		return pub, m.Room
	case m.To != "":
		return pub, "#" + m.To
	}
	return pub, ""
}

// cfPublications decodes stored messages' frames into publications.
func cfPublications(ds []Delivery) ([]*cfp.Publication, error) {
	pubs := make([]*cfp.Publication, 0, len(ds))
	for _, d := range ds {
		var m protocol.Msg
		if err := json.Unmarshal(d.Frame, &m); err != nil {
			return nil, fmt.Errorf("%w: decode stored message %d: %w", protocol.ErrInternal, d.Seq, err)
		}
		pub, _ := cfPublication(&m)
		pubs = append(pubs, pub)
	}
	return pubs, nil
}

// cfSubscribe is a subscribe through the shared subscribe (requests.go):
// offset is the stream seq, a recover with the current epoch is a resume
// with since = offset, one with another epoch (the stream was reset) a plain
// subscribe told recovered=false. Every room subscription is recoverable
// and positioned, whether the client asked or not (Centrifugo's
// force_recovery and force_positioning): Parley's rooms always are.
func (c *Conn) cfSubscribe(id uint32, req *cfp.SubscribeRequest) error {
	if user, ok := cfPersonalUser(req.Channel); ok {
		return c.cfSubscribePersonal(id, user)
	}
	if err := protocol.CheckName("channel", req.Channel); err != nil {
		return err
	}
	if _, ok := c.rooms[req.Channel]; ok {
		return &cfError{code: cfErrAlreadySub, msg: "already subscribed to " + req.Channel}
	}
	if len(c.rooms) >= c.e.cfg.MaxSubscriptions {
		return &cfError{code: cfErrLimit, msg: fmt.Sprintf("at most %d subscriptions per connection", c.e.cfg.MaxSubscriptions)}
	}
	ctx, cancel := c.workCtx(c.e.cfg.RequestTimeout)
	epoch, err := c.e.epoch.get(ctx, c.e.backend)
	cancel()
	if err != nil {
		return err
	}
	preq := &protocol.Request{ID: int64(id), Op: protocol.OpSub, Room: req.Channel}
	sameEpoch := req.Recover && req.Epoch == epoch
	if sameEpoch {
		since := req.Offset
		preq.Since = &since
	}
	// Before the subscribe: a join that presence announces for this very
	// subscription must find the flag set.
	c.cf.setJoinLeave(req.Channel, req.JoinLeave)
	err = c.subscribeRoom(preq, func(reply *protocol.Reply, replayed []Delivery) ([][]byte, error) {
		res := &cfp.SubscribeResult{Recoverable: true, Positioned: true, Epoch: epoch, Offset: *reply.Seq, WasRecovering: req.Recover}
		if req.Recover {
			res.Recovered = sameEpoch && reply.Recovered != nil && *reply.Recovered
			if res.Recovered && req.Offset > res.Offset {
				// The client saw newer messages live on another edge.
				res.Offset = req.Offset
			}
		}
		pubs, err := cfPublications(replayed)
		if err != nil {
			return nil, err
		}
		res.Publications = pubs
		b, err := c.cf.encode(&cfp.Reply{Id: id, Subscribe: res})
		if err != nil {
			return nil, err
		}
		return [][]byte{b}, nil
	})
	if err != nil {
		c.cf.setJoinLeave(req.Channel, false)
	}
	return err
}

// cfSubscribePersonal subscribes to "#user": the user's direct messages
// (chat.dm.<user>), live from now on, only the user's own.
func (c *Conn) cfSubscribePersonal(id uint32, user string) error {
	if user != c.ident.User {
		return &cfError{code: cfErrPermission, msg: "a personal channel #user is only its user's"}
	}
	if c.cf.personal != nil {
		return &cfError{code: cfErrAlreadySub, msg: "already subscribed to #" + user}
	}
	b, err := c.cf.encode(&cfp.Reply{Id: id, Subscribe: &cfp.SubscribeResult{}})
	if err != nil {
		return err
	}
	r, err := c.e.hub.Join(dmTopic(user), c, c.e.cfg.MaxQueuedMsgs)
	if err != nil {
		return err
	}
	c.cf.personal = r
	c.personal = append(c.personal, r) // teardown leaves it
	if !r.start(c, 0, b) {
		c.close(protocol.CloseSlowConsumer, "slow consumer: outbound queue overflowed")
	}
	return nil
}

func (c *Conn) cfUnsubscribe(id uint32, req *cfp.UnsubscribeRequest) error {
	if _, ok := cfPersonalUser(req.Channel); ok {
		if r := c.cf.personal; r != nil {
			c.e.hub.Leave(r, c)
			c.personal = slices.DeleteFunc(c.personal, func(p *room) bool { return p == r })
			c.cf.personal = nil
		}
	} else {
		if err := protocol.CheckName("channel", req.Channel); err != nil {
			return err
		}
		// Centrifugo answers an unsubscribe from a channel the client is
		// not in with success, and so does this.
		if r, ok := c.rooms[req.Channel]; ok {
			c.leaveRoom(req.Channel, r)
		}
		c.cf.setJoinLeave(req.Channel, false)
	}
	c.cfReply(&cfp.Reply{Id: id, Unsubscribe: &cfp.UnsubscribeResult{}})
	return nil
}

// cfPublish is a Parley publish without a msg_id (Centrifugo's publish has
// no idempotency key): the ack comes as the publish reply (cfReplyParley).
// To "#user" it is a direct message.
func (c *Conn) cfPublish(id uint32, req *cfp.PublishRequest) error {
	// JSON commands carry JSON data by construction; Protobuf ones carry
	// any bytes, and a message's data is JSON to every Parley client.
	if c.cf.protobuf && !json.Valid(req.Data) {
		return fmt.Errorf("%w: data must be JSON", protocol.ErrBadRequest)
	}
	preq := &protocol.Request{ID: int64(id), Op: protocol.OpPub, Room: req.Channel, Data: json.RawMessage(req.Data)}
	if user, ok := cfPersonalUser(req.Channel); ok {
		preq.Room, preq.To = "", user
	} else if err := protocol.CheckName("channel", req.Channel); err != nil {
		return err
	}
	return c.publish(preq)
}

// cfPresence is presence or presence_stats, from the presence service.
// Parley's presence knows users, not connections: each user is one entry,
// keyed by the user name, and num_clients counts users too.
func (c *Conn) cfPresence(id uint32, channel string, stats bool) error {
	if err := protocol.CheckName("channel", channel); err != nil {
		return err
	}
	if !c.ident.CanSubscribe(channel) {
		return fmt.Errorf("%w: your token does not allow channel %s", protocol.ErrForbidden, channel)
	}
	t := c.e.presence
	ctx, cancel := c.workCtx(c.e.cfg.RequestTimeout)
	defer cancel()
	r, err := c.e.backend.PresenceQuery(ctx, pjs.PresenceQuery{Room: channel, Limit: t.cfg.MaxUsers})
	if err != nil {
		return err
	}
	if stats {
		n := uint32(max(r.Total, 0))
		c.cfReply(&cfp.Reply{Id: id, PresenceStats: &cfp.PresenceStatsResult{NumClients: n, NumUsers: n}})
		return nil
	}
	res := &cfp.PresenceResult{Presence: make(map[string]*cfp.ClientInfo, len(r.Users))}
	for _, u := range r.Users {
		if protocol.ValidName(u) && len(res.Presence) < t.cfg.MaxUsers {
			res.Presence[u] = &cfp.ClientInfo{User: u}
		}
	}
	c.cfReply(&cfp.Reply{Id: id, Presence: res})
	return nil
}

// cfHistory is Centrifugo's history over the stream: limit 0 is only the
// position, -1 (or more than --max-history) is --max-history; since is an
// offset to read after (before, with reverse); without it the oldest come
// first, or with reverse the newest (those reach into the archive, as
// Parley's history does). The reply stays within the history byte budget.
func (c *Conn) cfHistory(id uint32, req *cfp.HistoryRequest) error {
	if err := protocol.CheckName("channel", req.Channel); err != nil {
		return err
	}
	if !c.ident.CanSubscribe(req.Channel) {
		return fmt.Errorf("%w: your token does not allow reading channel %s", protocol.ErrForbidden, req.Channel)
	}
	limit := int(req.Limit)
	if limit < 0 || limit > c.e.cfg.MaxHistory {
		limit = c.e.cfg.MaxHistory
	}
	ctx, cancel := c.workCtx(2 * c.e.cfg.RequestTimeout)
	defer cancel()
	epoch, err := c.e.epoch.get(ctx, c.e.backend)
	if err != nil {
		return err
	}
	topic := pjs.RoomSubject(req.Channel)
	top, err := c.e.backend.LastSeq(ctx, topic)
	if err != nil {
		return err
	}
	if req.Since != nil {
		if req.Since.Epoch != epoch {
			return &cfError{code: cfErrUnrecoverable, msg: "unrecoverable position: the stream was reset (epoch " + epoch + ")"}
		}
		if req.Reverse && req.Since.Offset == 0 {
			return fmt.Errorf("%w: reverse history since offset 0", protocol.ErrBadRequest)
		}
	}
	budget := min(c.e.cfg.MaxHistoryBytes, c.e.cfg.MaxQueuedBytes/2)
	var ds []Delivery
	switch {
	case limit == 0 || top == 0:
	case req.Reverse: // newest first, before since's offset or from the top
		before := uint64(0)
		if req.Since != nil {
			before = req.Since.Offset
		}
		if ds, err = c.e.reader.latest(ctx, topic, before, limit, 0); err != nil {
			return err
		}
		ds, _ = c.historyFromArchive(ctx, req.Channel, before, limit, ds)
		ds = newestWithin(ds, budget)
		slices.Reverse(ds)
	default: // oldest first, after since's offset or from the stream's start
		from := uint64(1)
		if req.Since != nil {
			from = req.Since.Offset + 1
		}
		if from <= top {
			if ds, _, err = c.e.reader.readRange(ctx, topic, from, top, limit); err != nil {
				return err
			}
		}
		ds = prefixWithin(ds, budget)
	}
	pubs, err := cfPublications(ds)
	if err != nil {
		return err
	}
	c.e.metrics.HistoryRequests.Inc()
	c.cfReply(&cfp.Reply{Id: id, History: &cfp.HistoryResult{Publications: pubs, Epoch: epoch, Offset: top}})
	return nil
}

// cfRefresh is Parley's refresh (refresh.go) answered Centrifugo's way.
func (c *Conn) cfRefresh(id uint32, req *cfp.RefreshRequest) error {
	ident, err := c.reauthenticate(req.Token)
	if err != nil {
		if errors.Is(err, protocol.ErrUnauthorized) {
			// The SDK fetches another token and tries again.
			return &cfError{code: cfErrTokenExpired, msg: err.Error()}
		}
		return err
	}
	res := &cfp.RefreshResult{Client: c.cf.client, Version: "parley"}
	if !ident.Expires.IsZero() {
		res.Expires, res.Ttl = true, uint32(max(time.Until(ident.Expires)/time.Second, 1))
	}
	c.cfReply(&cfp.Reply{Id: id, Refresh: res})
	return nil
}
