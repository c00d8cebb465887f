// Package client is the Go client of Parley's WebSocket protocol v1
// (docs/protocol.md). It speaks only the documented protocol, so it works
// against any edge.
//
// A Client is one logical session: requests are matched to replies by id,
// pushed messages arrive in order on Messages(), and the client remembers
// the last seq it handed to the application per room. With WithReconnect it
// survives a lost connection: it redials with jittered exponential backoff
// and resubscribes every room with since = that seq, so the application sees
// every message once, in order, across edges.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/protocol"
)

// ErrClosed is the client's error after Close.
var ErrClosed = errors.New("parley client: closed")

// ErrDisconnected fails requests that were in flight (or attempted) while
// the connection was down. A pub may or may not have been stored: retry it
// with the same msg_id.
var ErrDisconnected = errors.New("parley client: disconnected")

// Error is a coded error reply from the edge.
type Error struct {
	Code    protocol.Code
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// CloseError is how the edge ended the connection (see the close codes in
// docs/protocol.md).
type CloseError struct {
	Code int
	Text string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("connection closed by the edge: %d %s", e.Code, e.Text)
}

// HandshakeError is an upgrade the edge refused over HTTP (401, 403, 503).
type HandshakeError struct {
	StatusCode int
	Body       string
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("websocket upgrade refused: HTTP %d %s", e.StatusCode, e.Body)
}

// Event is a presence push (Op "join" or "leave"), or something the client
// itself reports about the session:
//   - "reconnected": a new connection is up and every room was resubscribed.
//   - "lost": a resubscription came back recovered:false (Reason says why):
//     messages of Room were lost to retention; read them with History.
//   - "unsubscribed": a resubscription was refused, or the edge ended the
//     subscription (a refreshed token no longer grants Room; Reason).
//   - "expiring": the token expires soon; with WithTokenFunc the client
//     refreshes it by itself (Refresh), else call Refresh.
//   - "refresh_failed": that automatic refresh failed (Reason); the edge
//     closes at exp and the reconnect asks the token function again.
type Event struct {
	Op     string
	Room   string
	User   string
	Reason string
}

// SubResult is the reply to a sub.
type SubResult struct {
	Room string
	// Seq is the room's newest stored seq when the subscription started.
	Seq uint64
	// Recovered is set for a sub with since or last.
	Recovered *bool
	Reason    string
}

// PubAck is the reply to a pub: the message's stream seq, and whether it
// was a duplicate of an earlier publish with the same msg_id.
type PubAck struct {
	Seq uint64
	Dup bool
}

// Backoff shapes reconnection: delays start at Min, double up to Max, and
// are jittered (a random value between half and all of the delay) so a mass
// disconnect does not come back as a thundering herd.
type Backoff struct {
	Min, Max time.Duration
}

type options struct {
	fallback    []string
	header      http.Header
	user        string
	token       string
	tokenFunc   func(context.Context) (string, error)
	dialer      *websocket.Dialer
	msgBuffer   int
	reconnect   *Backoff
	readTimeout time.Duration
}

// Option configures Dial.
type Option func(*options)

// WithFallbackURLs adds edges to reconnect to: each reconnection attempt
// takes the next URL of the list (the Dial URL first), so a client whose
// edge died or drained (4003) moves to another one.
func WithFallbackURLs(urls ...string) Option {
	return func(o *options) { o.fallback = append(o.fallback, urls...) }
}

// WithToken authenticates with a JWT (Authorization: Bearer).
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithTokenFunc fetches a token before every dial, so reconnects (and a
// reconnect after the token expired, close code 4001) use a fresh one.
func WithTokenFunc(f func(context.Context) (string, error)) Option {
	return func(o *options) { o.tokenFunc = f }
}

// WithUser connects as ?user=NAME: insecure dev mode only.
func WithUser(user string) Option { return func(o *options) { o.user = user } }

// WithHeader adds headers to the upgrade request (e.g. Origin).
func WithHeader(h http.Header) Option { return func(o *options) { o.header = h.Clone() } }

// WithDialer replaces the WebSocket dialer (TLS, proxies, local address).
func WithDialer(d *websocket.Dialer) Option { return func(o *options) { o.dialer = d } }

// WithMessageBuffer sets how many pushed messages wait for the application
// (default 1024). When it is full the client stops reading the socket
// (nothing is dropped): the edge sees a slow consumer and eventually
// disconnects it (close 4002), except during a long resume's replay, which
// waits for the client instead.
func WithMessageBuffer(n int) Option { return func(o *options) { o.msgBuffer = max(n, 0) } }

// WithReconnect makes the client redial after losing its connection and
// resubscribe every room from the last seq it delivered. Without it the
// client ends (Done) when its connection ends.
func WithReconnect(b Backoff) Option {
	return func(o *options) {
		if b.Min <= 0 {
			b.Min = 100 * time.Millisecond
		}
		if b.Max < b.Min {
			b.Max = max(b.Min, 10*time.Second)
		}
		o.reconnect = &b
	}
}

// WithReadTimeout ends a connection silent for longer than d (default 75 s;
// the edge pings every 25 s).
func WithReadTimeout(d time.Duration) Option { return func(o *options) { o.readTimeout = d } }

// Client is a session with an edge. Its methods are safe for concurrent use.
type Client struct {
	urls []string
	at   int // index in urls of the next dial; owned by run
	opts options

	msgs     chan protocol.Msg
	eventsCh chan Event
	stray    chan protocol.Reply

	nextID atomic.Int64

	mu      sync.Mutex
	cur     *session
	pending map[int64]*pending
	rooms   map[string]*roomState
	closed  bool
	err     error

	closing   chan struct{}
	done      chan struct{}
	closeOnce sync.Once

	droppedEvents atomic.Uint64
	duplicates    atomic.Uint64
}

type roomState struct {
	last uint64 // last seq handed to the application
}

type pending struct {
	ch chan protocol.Reply
	// onReply runs on the reader goroutine before any later frame is
	// handled, so room state changes are ordered with the messages.
	onReply func(protocol.Reply)
}

type session struct {
	ws      *websocket.Conn
	writeMu sync.Mutex
	gone    chan struct{} // closed when the session's reader has ended
}

// Dial connects to an edge's WebSocket URL (ws://host:port/ws).
func Dial(ctx context.Context, rawURL string, opts ...Option) (*Client, error) {
	o := options{msgBuffer: 1024, readTimeout: 75 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.dialer == nil {
		o.dialer = &websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 16 << 10, WriteBufferSize: 4 << 10}
	}
	var urls []string
	for _, raw := range append([]string{rawURL}, o.fallback...) {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("parley client: url %q: %w", raw, err)
		}
		if o.user != "" {
			q := u.Query()
			q.Set("user", o.user)
			u.RawQuery = q.Encode()
		}
		urls = append(urls, u.String())
	}
	c := &Client{
		urls:     urls,
		opts:     o,
		msgs:     make(chan protocol.Msg, o.msgBuffer),
		eventsCh: make(chan Event, 256),
		stray:    make(chan protocol.Reply, 64),
		pending:  make(map[int64]*pending),
		rooms:    make(map[string]*roomState),
		closing:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	s, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.cur = s
	go c.run(s)
	return c, nil
}

func (c *Client) dial(ctx context.Context) (*session, error) {
	h := c.opts.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	c.mu.Lock()
	tok := c.opts.token // Refresh may have replaced it
	c.mu.Unlock()
	if c.opts.tokenFunc != nil {
		t, err := c.opts.tokenFunc(ctx)
		if err != nil {
			return nil, fmt.Errorf("parley client: token: %w", err)
		}
		tok = t
	}
	if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	}
	u := c.urls[c.at%len(c.urls)]
	ws, resp, err := c.opts.dialer.DialContext(ctx, u, h)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			return nil, &HandshakeError{StatusCode: resp.StatusCode, Body: string(body)}
		}
		return nil, fmt.Errorf("parley client: dial %s: %w", u, err)
	}
	return &session{ws: ws, gone: make(chan struct{})}, nil
}

// Messages delivers pushed messages (rooms, DMs, broadcasts) in order, each
// once. It is closed when the client ends.
func (c *Client) Messages() <-chan protocol.Msg { return c.msgs }

// Events delivers presence pushes and session events. It is buffered (256);
// when the application does not read it, events are dropped and counted
// (DroppedEvents) rather than stalling messages.
func (c *Client) Events() <-chan Event { return c.eventsCh }

// Duplicates counts room messages the edge sent at or below a seq already
// delivered; the client dropped them. Nonzero means an edge broke its
// promise (or resumes overlapped), never that the application saw one twice.
func (c *Client) Duplicates() uint64 { return c.duplicates.Load() }

// DroppedEvents counts events dropped because Events was full.
func (c *Client) DroppedEvents() uint64 { return c.droppedEvents.Load() }

// Stray delivers replies that match no request of this client: replies to
// frames sent with Send, and replies without an id (to malformed frames).
// Buffered (64); extra ones are dropped.
func (c *Client) Stray() <-chan protocol.Reply { return c.stray }

// Done is closed when the client has ended: Close, or a lost connection
// without WithReconnect, or a reconnect that cannot succeed (401).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the client ended: a *CloseError with the edge's close code,
// a *HandshakeError, ErrClosed after Close, or a network error. Nil while
// it runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the session; Messages is closed once the reader has stopped.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		s := c.cur
		c.mu.Unlock()
		close(c.closing)
		if s != nil {
			s.writeMu.Lock()
			_ = s.ws.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			s.writeMu.Unlock()
			_ = s.ws.Close()
		}
	})
	<-c.done
	return nil
}

// run owns the reading side: one session at a time, then reconnects.
func (c *Client) run(s *session) {
	for {
		err := c.readLoop(s)
		c.detach(s)
		if c.isClosed() {
			c.finish(ErrClosed)
			return
		}
		if c.opts.reconnect == nil || !c.retryable(err) {
			c.finish(err)
			return
		}
		next, err := c.redial()
		if err != nil {
			c.finish(err)
			return
		}
		s = next
		go c.resubscribe(s)
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// retryable says whether a lost connection is worth redialling.
func (c *Client) retryable(err error) bool {
	var ce *CloseError
	if errors.As(err, &ce) {
		switch ce.Code {
		case protocol.ClosePolicyViolation, protocol.CloseTooLarge:
			return false
		case protocol.CloseTokenExpired:
			return c.opts.tokenFunc != nil
		}
	}
	return true
}

func (c *Client) redial() (*session, error) {
	b := *c.opts.reconnect
	delay := b.Min
	for {
		if len(c.urls) > 1 {
			c.at++
		}
		wait := delay/2 + rand.N(delay/2+1)
		select {
		case <-c.closing:
			return nil, ErrClosed
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		go func() {
			select {
			case <-c.closing:
				cancel()
			case <-ctx.Done():
			}
		}()
		s, err := c.dial(ctx)
		cancel()
		if err == nil {
			c.mu.Lock()
			if c.closed {
				c.mu.Unlock()
				_ = s.ws.Close()
				return nil, ErrClosed
			}
			c.cur = s
			c.mu.Unlock()
			return s, nil
		}
		var he *HandshakeError
		if errors.As(err, &he) && (he.StatusCode == http.StatusUnauthorized || he.StatusCode == http.StatusForbidden) && c.opts.tokenFunc == nil {
			return nil, err
		}
		delay = min(2*delay, b.Max)
	}
}

// resubscribe puts every room back on a new session from the last seq the
// application got; the edge replays what was missed before live messages.
func (c *Client) resubscribe(s *session) {
	c.mu.Lock()
	type want struct {
		room  string
		since uint64
	}
	var rooms []want
	for name, r := range c.rooms {
		rooms = append(rooms, want{name, r.last})
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range rooms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			since := w.since
			rep, err := c.request(ctx, s, protocol.Request{Op: protocol.OpSub, Room: w.room, Since: &since}, func(r protocol.Reply) {
				// Runs before any message of the room is handled.
				if pos, ok := resetPosition(since, r); ok {
					c.mu.Lock()
					if st := c.rooms[w.room]; st != nil {
						st.last = pos
					}
					c.mu.Unlock()
				}
			})
			if err == nil && rep.Error != nil {
				err = &Error{Code: rep.Error.Code, Message: rep.Error.Message}
			}
			var ce *Error
			switch {
			case errors.As(err, &ce) && (ce.Code == protocol.CodeForbidden || ce.Code == protocol.CodeBadRequest):
				c.mu.Lock()
				delete(c.rooms, w.room)
				c.mu.Unlock()
				c.event(Event{Op: "unsubscribed", Room: w.room, Reason: ce.Message})
			case err != nil:
				// The session is failing too; the next one retries.
				_ = s.ws.Close()
			case rep.Recovered != nil && !*rep.Recovered:
				c.event(Event{Op: "lost", Room: w.room, Reason: rep.Reason})
			}
		}()
	}
	wg.Wait()
	c.event(Event{Op: "reconnected"})
}

func (c *Client) detach(s *session) {
	close(s.gone)
	_ = s.ws.Close()
	c.mu.Lock()
	if c.cur == s {
		c.cur = nil
	}
	for id, p := range c.pending {
		close(p.ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

func (c *Client) finish(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	close(c.msgs)
	close(c.done)
}

// wire is every field a line from the edge may carry: a reply, a msg push
// or a presence push.
type wire struct {
	Op        string            `json:"op"`
	ID        int64             `json:"id"`
	OK        bool              `json:"ok"`
	Room      string            `json:"room"`
	To        string            `json:"to"`
	User      string            `json:"user"`
	Seq       *uint64           `json:"seq"`
	Dup       *bool             `json:"dup"`
	Recovered *bool             `json:"recovered"`
	Reason    string            `json:"reason"`
	MsgID     string            `json:"msg_id"`
	From      string            `json:"from"`
	TS        int64             `json:"ts"`
	Data      json.RawMessage   `json:"data"`
	Msgs      []json.RawMessage `json:"msgs"`
	Users     []string          `json:"users"`
	Error     *protocol.Error   `json:"error"`
}

func (c *Client) readLoop(s *session) error {
	timeout := c.opts.readTimeout
	_ = s.ws.SetReadDeadline(time.Now().Add(timeout))
	s.ws.SetPingHandler(func(data string) error {
		_ = s.ws.SetReadDeadline(time.Now().Add(timeout))
		s.writeMu.Lock()
		defer s.writeMu.Unlock()
		return s.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(5*time.Second))
	})
	for {
		_, frame, err := s.ws.ReadMessage()
		if err != nil {
			var wce *websocket.CloseError
			// 1006 is gorilla's name for a connection that broke without a
			// close frame: a network error, not something the edge said.
			if errors.As(err, &wce) && wce.Code != websocket.CloseAbnormalClosure {
				return &CloseError{Code: wce.Code, Text: wce.Text}
			}
			return fmt.Errorf("parley client: connection lost: %w", err)
		}
		_ = s.ws.SetReadDeadline(time.Now().Add(timeout))
		stop := false
		protocol.SplitFrame(frame, func(line []byte) {
			if !stop && !c.handle(line) {
				stop = true
			}
		})
		if stop {
			return ErrClosed
		}
	}
}

// handle processes one line; false means the client is closing.
func (c *Client) handle(line []byte) bool {
	var w wire
	if decodeMsgPush(line, &w) == nil {
		return c.deliver(&w)
	}
	w = wire{}
	if err := json.Unmarshal(line, &w); err != nil {
		c.strayReply(protocol.Reply{Error: &protocol.Error{Code: protocol.CodeInternal, Message: "client: undecodable line from edge: " + err.Error()}})
		return true
	}
	switch w.Op {
	case "":
		c.reply(&w)
		return true
	case protocol.OpMsg:
		return c.deliver(&w)
	case protocol.OpJoin, protocol.OpLeave:
		c.event(Event{Op: w.Op, Room: w.Room, User: w.User})
		return true
	case protocol.OpUnsubscribed:
		// The edge ended the subscription (a refreshed token no longer
		// grants the room): a reconnect must not subscribe it again.
		c.mu.Lock()
		delete(c.rooms, w.Room)
		c.mu.Unlock()
		c.event(Event{Op: w.Op, Room: w.Room, Reason: w.Reason})
		return true
	case protocol.OpExpiring:
		if c.opts.tokenFunc != nil {
			// Off the read loop: the refresh waits for a reply it reads.
			go c.refreshFromFunc()
		}
		c.event(Event{Op: w.Op, Reason: w.Reason})
		return true
	}
	return true // a push of a later protocol version: ignore
}

func (c *Client) deliver(w *wire) bool {
	m := protocol.Msg{Op: w.Op, Room: w.Room, To: w.To, MsgID: w.MsgID, From: w.From, TS: w.TS, Data: w.Data}
	if w.Seq != nil {
		m.Seq = *w.Seq
	}
	var rs *roomState
	if m.Room != "" {
		c.mu.Lock()
		rs = c.rooms[m.Room]
		c.mu.Unlock()
		if rs != nil && m.Seq <= rs.last {
			c.duplicates.Add(1)
			return true // already delivered (a resume overlapping a seam)
		}
	}
	select {
	case c.msgs <- m:
	case <-c.closing:
		return false
	}
	if rs != nil {
		c.mu.Lock()
		rs.last = m.Seq
		c.mu.Unlock()
	}
	return true
}

func (c *Client) reply(w *wire) {
	r := protocol.Reply{ID: w.ID, OK: w.OK, Room: w.Room, Seq: w.Seq, Dup: w.Dup, Recovered: w.Recovered,
		Reason: w.Reason, Msgs: w.Msgs, Users: w.Users, Error: w.Error}
	c.mu.Lock()
	p := c.pending[r.ID]
	if p != nil {
		delete(c.pending, r.ID)
	}
	c.mu.Unlock()
	if p == nil {
		c.strayReply(r)
		return
	}
	if p.onReply != nil {
		p.onReply(r)
	}
	p.ch <- r
}

func (c *Client) strayReply(r protocol.Reply) {
	select {
	case c.stray <- r:
	default:
	}
}

func (c *Client) event(e Event) {
	select {
	case c.eventsCh <- e:
	default:
		c.droppedEvents.Add(1)
	}
}

// Request sends one request and waits for its reply. The id is assigned by
// the client. A reply with an error is returned as it is (err == nil).
func (c *Client) Request(ctx context.Context, req protocol.Request) (protocol.Reply, error) {
	c.mu.Lock()
	s := c.cur
	c.mu.Unlock()
	if s == nil {
		if c.isClosed() {
			return protocol.Reply{}, ErrClosed
		}
		return protocol.Reply{}, ErrDisconnected
	}
	return c.request(ctx, s, req, nil)
}

func (c *Client) request(ctx context.Context, s *session, req protocol.Request, onReply func(protocol.Reply)) (protocol.Reply, error) {
	req.ID = c.nextID.Add(1)
	p := &pending{ch: make(chan protocol.Reply, 1), onReply: onReply}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return protocol.Reply{}, ErrClosed
	}
	select {
	case <-s.gone:
		c.mu.Unlock()
		return protocol.Reply{}, ErrDisconnected
	default:
	}
	c.pending[req.ID] = p
	c.mu.Unlock()
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(req.ID)
		return protocol.Reply{}, fmt.Errorf("parley client: encode request: %w", err)
	}
	if err := s.write(ctx, b); err != nil {
		c.forget(req.ID)
		return protocol.Reply{}, fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	select {
	case r, ok := <-p.ch:
		if !ok {
			if c.isClosed() {
				return protocol.Reply{}, ErrClosed
			}
			return protocol.Reply{}, ErrDisconnected
		}
		return r, nil
	case <-ctx.Done():
		c.forget(req.ID)
		return protocol.Reply{}, ctx.Err()
	}
}

func (c *Client) forget(id int64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (s *session) write(ctx context.Context, b []byte) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = s.ws.SetWriteDeadline(deadline)
	return s.ws.WriteMessage(websocket.TextMessage, b)
}

// Send writes a raw frame as it is (one or more JSON objects separated by
// '\n'); replies to it arrive on Stray.
func (c *Client) Send(ctx context.Context, frame []byte) error {
	c.mu.Lock()
	s := c.cur
	c.mu.Unlock()
	if s == nil {
		return ErrDisconnected
	}
	return s.write(ctx, frame)
}

func (c *Client) call(ctx context.Context, req protocol.Request, onReply func(protocol.Reply)) (protocol.Reply, error) {
	c.mu.Lock()
	s := c.cur
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return protocol.Reply{}, ErrClosed
	}
	if s == nil {
		return protocol.Reply{}, ErrDisconnected
	}
	r, err := c.request(ctx, s, req, onReply)
	if err != nil {
		return r, err
	}
	if r.Error != nil {
		return r, &Error{Code: r.Error.Code, Message: r.Error.Message}
	}
	return r, nil
}

// SubOption modifies a sub.
type SubOption func(*protocol.Request)

// Since resumes after seq: every stored message of the room after it is
// replayed, then live messages follow. A long resume (thousands of
// messages, say after a weekend offline) is streamed by the edge at the
// pace the application reads Messages(): Subscribe returns with the reply
// at once, and the replayed messages arrive on Messages() like any other.
// Keep reading: an edge closes a connection whose socket accepts nothing
// for its write timeout (10 s), and one whose replay the stream could not
// finish (1013); with WithReconnect the client then resumes from the last
// message it delivered, losing nothing.
func Since(seq uint64) SubOption { return func(r *protocol.Request) { r.Since = &seq } }

// Last asks for the room's n latest messages before live ones.
func Last(n int) SubOption { return func(r *protocol.Request) { r.Last = &n } }

// Subscribe subscribes to a room. From then on the client tracks the room's
// last delivered seq, which is where a reconnect resumes.
func (c *Client) Subscribe(ctx context.Context, room string, opts ...SubOption) (SubResult, error) {
	req := protocol.Request{Op: protocol.OpSub, Room: room}
	for _, o := range opts {
		o(&req)
	}
	r, err := c.call(ctx, req, func(r protocol.Reply) {
		if r.Error != nil {
			return
		}
		// Runs before any message of the room is handled.
		st := &roomState{}
		switch {
		case req.Since != nil:
			st.last = *req.Since
			if pos, ok := resetPosition(*req.Since, r); ok {
				st.last = pos
			}
		case req.Last != nil:
			st.last = 0
		case r.Seq != nil:
			st.last = *r.Seq
		}
		c.mu.Lock()
		c.rooms[room] = st
		c.mu.Unlock()
	})
	if err != nil {
		return SubResult{}, err
	}
	res := SubResult{Room: r.Room, Recovered: r.Recovered, Reason: r.Reason}
	if r.Seq != nil {
		res.Seq = *r.Seq
	}
	return res, nil
}

// resetPosition says whether a resume's reply reports the stream reset
// (recovered:false with a position below since): the room's new messages
// then have lower seqs than those seen before, and the client's position
// must drop to the reply's seq or it would discard them as old.
func resetPosition(since uint64, r protocol.Reply) (uint64, bool) {
	if r.Error != nil || r.Seq == nil || *r.Seq >= since || r.Recovered == nil || *r.Recovered {
		return 0, false
	}
	return *r.Seq, true
}

// Unsubscribe stops a room's messages.
// Refresh replaces the connection's token without reconnecting: the same
// user, new grants and expiry (rooms it no longer grants end with an
// "unsubscribed" Event). With WithTokenFunc the client does this by itself
// when the edge says the token is expiring. A token given here also serves
// the next reconnect when there is no token function.
func (c *Client) Refresh(ctx context.Context, token string) error {
	if _, err := c.call(ctx, protocol.Request{Op: protocol.OpRefresh, Token: token}, nil); err != nil {
		return err
	}
	c.mu.Lock()
	c.opts.token = token
	c.mu.Unlock()
	return nil
}

// refreshFromFunc refreshes with a token from the token function; a
// failure is an Event (the edge closes with 4001 at exp, and the reconnect
// asks the function again).
func (c *Client) refreshFromFunc() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := c.opts.tokenFunc(ctx)
	if err == nil {
		err = c.Refresh(ctx, tok)
	}
	if err != nil && !errors.Is(err, ErrClosed) {
		c.event(Event{Op: "refresh_failed", Reason: err.Error()})
	}
}

func (c *Client) Unsubscribe(ctx context.Context, room string) error {
	_, err := c.call(ctx, protocol.Request{Op: protocol.OpUnsub, Room: room}, func(r protocol.Reply) {
		if r.Error == nil || r.Error.Code == protocol.CodeNotFound {
			c.mu.Lock()
			delete(c.rooms, room)
			c.mu.Unlock()
		}
	})
	return err
}

// Publish sends data (any JSON-encodable value, or json.RawMessage) to a
// room. msgID (optional) makes retries safe: reuse it when retrying. When
// ctx carries an OpenTelemetry span, its W3C trace context goes with the
// message (traceparent), so the edge, the deliveries and the archive join
// that trace.
func (c *Client) Publish(ctx context.Context, room, msgID string, data any) (PubAck, error) {
	return c.publish(ctx, protocol.Request{Op: protocol.OpPub, Room: room, MsgID: msgID}, data)
}

// PublishDM sends a direct message to every connection of user to.
func (c *Client) PublishDM(ctx context.Context, to, msgID string, data any) (PubAck, error) {
	return c.publish(ctx, protocol.Request{Op: protocol.OpPub, To: to, MsgID: msgID}, data)
}

func (c *Client) publish(ctx context.Context, req protocol.Request, data any) (PubAck, error) {
	raw, ok := data.(json.RawMessage)
	if !ok {
		b, err := json.Marshal(data)
		if err != nil {
			return PubAck{}, fmt.Errorf("parley client: encode data: %w", err)
		}
		raw = b
	}
	req.Data = raw
	withTrace(ctx, &req)
	r, err := c.call(ctx, req, nil)
	if err != nil {
		return PubAck{}, err
	}
	var ack PubAck
	if r.Seq != nil {
		ack.Seq = *r.Seq
	}
	if r.Dup != nil {
		ack.Dup = *r.Dup
	}
	return ack, nil
}

// History reads up to limit messages of a room before seq before (0: the
// newest), oldest first. limit 0 means the edge's default (50).
func (c *Client) History(ctx context.Context, room string, before uint64, limit int) ([]protocol.Msg, error) {
	r, err := c.call(ctx, protocol.Request{Op: protocol.OpHistory, Room: room, Before: before, Limit: limit}, nil)
	if err != nil {
		return nil, err
	}
	msgs := make([]protocol.Msg, 0, len(r.Msgs))
	for _, raw := range r.Msgs {
		var m protocol.Msg
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("parley client: decode history message: %w", err)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// Presence lists the users present in a room. Like Publish, it sends the
// trace context of ctx's span, if any.
func (c *Client) Presence(ctx context.Context, room string) ([]string, error) {
	req := protocol.Request{Op: protocol.OpPresence, Room: room}
	withTrace(ctx, &req)
	r, err := c.call(ctx, req, nil)
	if err != nil {
		return nil, err
	}
	return r.Users, nil
}

// Ping is an application-level round trip.
func (c *Client) Ping(ctx context.Context) error {
	_, err := c.call(ctx, protocol.Request{Op: protocol.OpPing}, nil)
	return err
}
