//go:build unix

package chaostest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/client"
)

// The raw clients below are written from docs/protocol.md alone, not from
// the edge's code or the client package: they are the document's reader.

// line is any JSON object an edge sends: a reply, a msg push or a presence
// push.
type line struct {
	Op        string          `json:"op"`
	ID        int64           `json:"id"`
	OK        bool            `json:"ok"`
	Room      string          `json:"room"`
	Seq       *uint64         `json:"seq"`
	Dup       *bool           `json:"dup"`
	Recovered *bool           `json:"recovered"`
	Reason    string          `json:"reason"`
	MsgID     string          `json:"msg_id"`
	From      string          `json:"from"`
	Data      json.RawMessage `json:"data"`
	Error     *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// request is what the raw clients send.
type request struct {
	ID    int64   `json:"id"`
	Op    string  `json:"op"`
	Room  string  `json:"room,omitempty"`
	Since *uint64 `json:"since,omitempty"`
	MsgID string  `json:"msg_id,omitempty"`
	Data  any     `json:"data,omitempty"`
}

// rawConn is one WebSocket connection and its reader.
type rawConn struct {
	ws    *websocket.Conn
	wmu   sync.Mutex
	lines chan line
	done  chan struct{} // closed when the reader has ended
	quit  chan struct{} // closed by close: the reader stops handing lines
	once  sync.Once
	// how says how the connection ended: the close code the edge sent,
	// or "network" (reset, EOF, timeout without a close frame).
	how string
	// bad counts lines that were not JSON objects (the doc says every
	// line is one).
	bad []string
}

var dialer = &websocket.Dialer{HandshakeTimeout: 3 * time.Second}

func dialRaw(ctx context.Context, edgeURL, user string) (*rawConn, error) {
	u, err := url.Parse(edgeURL)
	if err != nil {
		return nil, err
	}
	u.RawQuery = url.Values{"user": {user}}.Encode()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ws, resp, err := dialer.DialContext(ctx, u.String(), nil)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil, err
	}
	c := &rawConn{ws: ws, lines: make(chan line, 256), done: make(chan struct{}), quit: make(chan struct{})}
	go c.read()
	return c, nil
}

func (c *rawConn) read() {
	defer close(c.done)
	defer close(c.lines)
	for {
		_, frame, err := c.ws.ReadMessage()
		if err != nil {
			c.how = "network"
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
				c.how = strconv.Itoa(ce.Code)
			}
			return
		}
		// A frame carries one or more objects separated by \n.
		for _, b := range bytes.Split(frame, []byte{'\n'}) {
			b = bytes.TrimSpace(b)
			if len(b) == 0 {
				continue
			}
			var l line
			if err := json.Unmarshal(b, &l); err != nil {
				c.bad = append(c.bad, string(b))
				continue
			}
			select {
			case c.lines <- l:
			case <-c.quit:
				return
			}
		}
	}
}

func (c *rawConn) send(r request) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(3 * time.Second))
	return c.ws.WriteMessage(websocket.TextMessage, b)
}

// close ends the connection (with a normal close frame when it can) and
// waits for the reader.
func (c *rawConn) close() {
	c.once.Do(func() {
		close(c.quit)
		c.wmu.Lock()
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		c.wmu.Unlock()
		_ = c.ws.Close()
	})
	<-c.done
}

// backoff waits a jittered moment before a retry.
func backoff(ctx context.Context, rng *rand.Rand, lo, hi time.Duration) error {
	return sleep(ctx, between(rng, lo, hi))
}

// publisher publishes numbered messages to its rooms round-robin, one at
// a time, and retries each with the same msg_id after any error or lost
// connection until it is acked, as docs/protocol.md tells a client to.
type publisher struct {
	name     string
	rooms    []string
	urls     []string
	rec      *Recorder
	rng      *rand.Rand
	interval time.Duration

	conn  *rawConn
	reqID int64
}

// run publishes until stop is closed, then finishes (acks) the message in
// hand; ctx bounds everything (a message unacked when it ends is abandoned).
func (p *publisher) run(ctx context.Context, stop <-chan struct{}) {
	defer func() {
		if p.conn != nil {
			p.conn.close()
		}
	}()
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		room := p.rooms[i%len(p.rooms)]
		msgID := fmt.Sprintf("%s-%d", p.name, i)
		p.publish(ctx, room, msgID, map[string]any{"pub": p.name, "n": i, "ts": time.Now().UnixMilli()})
		select {
		case <-tick.C:
		case <-stop:
			return
		case <-ctx.Done():
			return
		}
	}
}

// retryable are the error codes after which the doc says to retry with
// the same msg_id.
func retryable(code string) bool {
	return code == "unavailable" || code == "rate_limited" || code == "internal"
}

// drop gives up on the connection, counting how it ended if the edge
// ended it.
func (p *publisher) drop() {
	if p.conn == nil {
		return
	}
	select {
	case <-p.conn.done:
		p.rec.disconnected(p.conn.how)
	default:
	}
	p.conn.close()
	p.conn = nil
}

func (p *publisher) publish(ctx context.Context, room, msgID string, data any) {
	for {
		if ctx.Err() != nil {
			p.rec.abandon(msgID)
			return
		}
		if p.conn == nil {
			c, err := dialRaw(ctx, p.urls[p.rng.IntN(len(p.urls))], p.name)
			if err != nil {
				p.rec.pubError("dial", err.Error())
				_ = backoff(ctx, p.rng, 20*time.Millisecond, 200*time.Millisecond)
				continue
			}
			p.conn = c
		}
		p.reqID++
		id := p.reqID
		if err := p.conn.send(request{ID: id, Op: "pub", Room: room, MsgID: msgID, Data: data}); err != nil {
			p.rec.pubError("disconnected", "send: "+err.Error())
			p.drop()
			continue
		}
		reply, ok := p.await(ctx, id)
		switch {
		case !ok:
			// Lost connection or no answer: it may or may not be stored.
			p.drop()
			continue
		case reply.Error != nil:
			p.rec.pubError(reply.Error.Code, reply.Error.Message)
			if !retryable(reply.Error.Code) {
				p.rec.anomaly("%s: pub %s to %s refused: %s %s", p.name, msgID, room, reply.Error.Code, reply.Error.Message)
				return
			}
			_ = backoff(ctx, p.rng, 20*time.Millisecond, 200*time.Millisecond)
			continue
		case !reply.OK || reply.Seq == nil:
			p.rec.anomaly("%s: pub %s reply has neither ok+seq nor error: %+v", p.name, msgID, reply)
			p.drop()
			continue
		}
		p.rec.ack(Ack{Publisher: p.name, Room: room, MsgID: msgID, Seq: *reply.Seq, Dup: reply.Dup != nil && *reply.Dup})
		return
	}
}

// pubWait bounds the wait for an ack: longer than the edge's publish
// timeout (5 s), after which it answers unavailable itself.
const pubWait = 8 * time.Second

func (p *publisher) await(ctx context.Context, id int64) (line, bool) {
	t := time.NewTimer(pubWait)
	defer t.Stop()
	for {
		select {
		case l, ok := <-p.conn.lines:
			if !ok {
				// Which close: a 4003 here is a pub that crossed the
				// drain's close frame (the edge answers the ones it read).
				<-p.conn.done
				p.rec.pubError("disconnected-"+p.conn.how, "connection ended ("+p.conn.how+") while waiting for the ack")
				return line{}, false
			}
			if l.ID == id && l.Op == "" {
				return l, true
			}
		case <-t.C:
			p.rec.pubError("timeout", fmt.Sprintf("no reply within %v", pubWait))
			return line{}, false
		case <-ctx.Done():
			return line{}, false
		}
	}
}

// rawSubscriber stays subscribed to its rooms across any number of
// connections: after each disconnect it connects to a random edge and
// resubscribes every room with since = the highest seq of the room's
// messages it handled (a plain sub for a room it never got a reply for).
type rawSubscriber struct {
	name  string
	rooms []string
	urls  []string
	rec   *Recorder
	rng   *rand.Rand

	conn int               // connection number
	edge string            // the current connection's edge
	pos  map[string]uint64 // position per room, once has[room]
	has  map[string]bool
}

func newRawSubscriber(name string, rooms, urls []string, rec *Recorder, rng *rand.Rand) *rawSubscriber {
	rec.addSubscriber(name, false, rooms)
	return &rawSubscriber{name: name, rooms: rooms, urls: urls, rec: rec, rng: rng,
		pos: map[string]uint64{}, has: map[string]bool{}}
}

func (s *rawSubscriber) run(ctx context.Context) {
	for ctx.Err() == nil {
		edge := s.urls[s.rng.IntN(len(s.urls))]
		c, err := dialRaw(ctx, edge, s.name)
		if err != nil {
			_ = backoff(ctx, s.rng, 20*time.Millisecond, 200*time.Millisecond)
			continue
		}
		s.conn++
		s.edge = edge
		ended := s.session(ctx, c)
		c.close()
		if ended {
			s.rec.disconnected(c.how)
		}
		for _, b := range c.bad {
			s.rec.anomaly("%s: line that is not a JSON object: %.200q", s.name, b)
		}
		_ = backoff(ctx, s.rng, 20*time.Millisecond, 200*time.Millisecond)
	}
}

// session runs one connection until it ends (or stops answering pings);
// it reports whether the edge's side ended it.
func (s *rawSubscriber) session(ctx context.Context, c *rawConn) (ended bool) {
	var next int64
	subs := map[int64]string{}   // sub request id → room
	since := map[int64]*uint64{} // what the sub asked
	replied := map[string]bool{}
	due := map[string]time.Time{} // rooms to (re)subscribe, and when
	for _, r := range s.rooms {
		due[r] = time.Time{}
	}
	var pingID int64
	var pingSent time.Time
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	lastPing := time.Now()
	housekeeping := func() bool {
		now := time.Now()
		for room, at := range due {
			if now.Before(at) {
				continue
			}
			delete(due, room)
			next++
			req := request{ID: next, Op: "sub", Room: room}
			if s.has[room] {
				p := s.pos[room]
				req.Since = &p
			}
			subs[next], since[next] = room, req.Since
			if c.send(req) != nil {
				return false
			}
		}
		// An edge that stopped answering is as good as gone.
		if pingID != 0 && now.Sub(pingSent) > 5*time.Second {
			s.rec.disconnected("ping-timeout")
			return false
		}
		if pingID == 0 && now.Sub(lastPing) > time.Second {
			next++
			pingID, pingSent, lastPing = next, now, now
			if c.send(request{ID: next, Op: "ping"}) != nil {
				return false
			}
		}
		return true
	}
	if !housekeeping() {
		return false
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
			if !housekeeping() {
				return false
			}
		case l, ok := <-c.lines:
			if !ok {
				return true
			}
			switch {
			case l.Op == "msg":
				if l.Seq == nil {
					s.rec.anomaly("%s: msg without seq: %+v", s.name, l)
					continue
				}
				if !replied[l.Room] {
					s.rec.anomaly("%s: seq %d of %s before the sub reply (conn %d)", s.name, *l.Seq, l.Room, s.conn)
				}
				s.rec.deliver(s.name, l.Room, Delivery{Conn: s.conn, Seq: *l.Seq, MsgID: l.MsgID, From: l.From})
				if *l.Seq > s.pos[l.Room] {
					s.pos[l.Room] = *l.Seq
				}
			case l.Op != "":
				// join/leave: presence, best effort; not checked here.
			case l.ID != 0 && l.ID == pingID:
				pingID = 0
			case l.ID != 0:
				room, ok := subs[l.ID]
				if !ok {
					continue
				}
				asked := since[l.ID]
				delete(subs, l.ID)
				delete(since, l.ID)
				if l.Error != nil {
					s.rec.subError(l.Error.Code)
					due[room] = time.Now().Add(between(s.rng, 50*time.Millisecond, 250*time.Millisecond))
					continue
				}
				if l.Seq == nil {
					s.rec.anomaly("%s: sub reply for %s without seq", s.name, room)
					continue
				}
				replied[room] = true
				s.rec.subReply(s.name, room, SubReply{Conn: s.conn, Edge: s.edge, Since: asked, Seq: *l.Seq, Recovered: l.Recovered, Reason: l.Reason})
				switch {
				case !s.has[room]:
					s.has[room], s.pos[room] = true, *l.Seq
				case asked != nil && l.Recovered == nil:
					s.rec.anomaly("%s: resume of %s since %d answered without recovered", s.name, room, *asked)
				case asked != nil && !*l.Recovered && *l.Seq < *asked:
					// The doc's stream reset: the position is the reply's.
					s.rec.anomaly("%s: resume of %s since %d says the stream was reset (seq %d): %s", s.name, room, *asked, *l.Seq, l.Reason)
					s.pos[room] = *l.Seq
				}
			case l.Error != nil:
				s.rec.anomaly("%s: error without id: %s %s", s.name, l.Error.Code, l.Error.Message)
			}
		}
	}
}

// goSubscriber is an application on the Go client with WithReconnect: the
// client resubscribes with since by itself; the application only reads.
type goSubscriber struct {
	name  string
	rooms []string
	urls  []string
	rec   *Recorder
	rng   *rand.Rand
}

func newGoSubscriber(name string, rooms, urls []string, rec *Recorder, rng *rand.Rand) *goSubscriber {
	rec.addSubscriber(name, true, rooms)
	return &goSubscriber{name: name, rooms: rooms, urls: urls, rec: rec, rng: rng}
}

// run subscribes, then records until ctx ends.
func (g *goSubscriber) run(ctx context.Context) {
	urls := append([]string(nil), g.urls...)
	g.rng.Shuffle(len(urls), func(i, j int) { urls[i], urls[j] = urls[j], urls[i] })
	var c *client.Client
	for c == nil {
		var err error
		c, err = client.Dial(ctx, urls[0], client.WithUser(g.name),
			client.WithReconnect(client.Backoff{Min: 50 * time.Millisecond, Max: time.Second}),
			client.WithFallbackURLs(urls[1:]...), client.WithReadTimeout(30*time.Second))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			urls = append(urls[1:], urls[0])
			_ = backoff(ctx, g.rng, 20*time.Millisecond, 200*time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for m := range c.Messages() {
			g.rec.deliver(g.name, m.Room, Delivery{Seq: m.Seq, MsgID: m.MsgID, From: m.From})
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case ev := <-c.Events():
				switch ev.Op {
				case "lost":
					g.rec.lost(g.name, ev.Room, ev.Reason)
				case "unsubscribed":
					g.rec.anomaly("%s (Go client): resubscribing %s refused: %s", g.name, ev.Room, ev.Reason)
				case "reconnected":
					g.rec.disconnected("go-client-reconnected")
				}
			case <-c.Done():
				return
			}
		}
	}()
	for _, room := range g.rooms {
		for {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			res, err := c.Subscribe(sctx, room)
			cancel()
			if err == nil {
				g.rec.subReply(g.name, room, SubReply{Seq: res.Seq})
				break
			}
			var ce *client.Error
			if errors.As(err, &ce) {
				g.rec.subError(string(ce.Code))
			} else {
				g.rec.subError("disconnected")
			}
			if backoff(ctx, g.rng, 50*time.Millisecond, 250*time.Millisecond) != nil {
				break
			}
		}
	}
	<-ctx.Done()
	_ = c.Close()
	wg.Wait()
	g.rec.clientDuplicates(g.name, c.Duplicates())
}
