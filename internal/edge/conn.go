package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/protocol"
)

// Conn is one WebSocket client: a reader (the HTTP handler's goroutine) that
// handles requests in order, and a writer goroutine that drains the outbox,
// coalescing everything queued into one frame.
type Conn struct {
	id    uint64
	e     *Edge
	ws    *websocket.Conn
	ident *auth.Identity
	log   *slog.Logger
	out   *outbox

	// rooms is touched only by the reader goroutine, and after it ends.
	rooms map[string]*room
	// replays are the long resumes of rooms (replay.go); same ownership
	// as rooms. An entry stays until unsub or teardown stops it.
	replays map[string]*replay
	// life is cancelled when the connection must end (close): the context
	// of work that outlives a request, such as a long resume. Made on first
	// use (lifeCtx): most connections never need one.
	lifeMu     sync.Mutex
	life       context.Context
	lifeCancel context.CancelFunc
	// personal are the DM and broadcast topics every connection is in.
	personal []*room

	reqLimit  *rate.Limiter
	pubLimit  *rate.Limiter
	pingLimit *rate.Limiter // WebSocket pings from the client
	strikes   int           // policy strikes in the current window (reader only)
	strikeAt  time.Time

	inflight atomic.Int32 // publishes awaiting their JetStream ack
	draining atomic.Bool

	closeOnce sync.Once
	closeCode int
	closeText string
	closing   chan struct{} // closed when the connection must end
	done      chan struct{} // closed when the writer has finished (markDone)
	doneOnce  sync.Once
	tornDown  atomic.Bool
	pinger    atomic.Pointer[time.Timer] // asks for the next WebSocket ping
	attached  atomic.Bool                // ws is set (see attach)

	// Reading: one reader at a time, the first or one the poller woke.
	fr         *frameReader
	rc         syscall.RawConn
	parked     atomic.Bool // waiting in the poller, no reader running
	pollID     int32
	pollAdded  bool
	tokenTimer *time.Timer
	frames     chan []byte   // reader → waiting handler (unbuffered)
	handled    chan struct{} // handler → reader: the frame is done
}

func newConn(e *Edge, id uint64, ws *websocket.Conn, ident *auth.Identity) *Conn {
	cfg := &e.cfg
	c := &Conn{
		id:       id,
		e:        e,
		ws:       ws,
		ident:    ident,
		log:      e.log.With("conn", id, "user", ident.User),
		out:      newOutbox(cfg.MaxQueuedMsgs, cfg.MaxQueuedBytes, nil),
		rooms:    make(map[string]*room),
		reqLimit: rate.NewLimiter(rate.Limit(cfg.RequestRate), cfg.RequestBurst),
		pubLimit: rate.NewLimiter(rate.Limit(cfg.PublishRate), cfg.PublishBurst),
		// Pings share the request budget's rate: a client pinging faster
		// than it may send requests is not keeping a connection alive.
		pingLimit: rate.NewLimiter(rate.Limit(cfg.RequestRate), cfg.RequestBurst),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
		frames:    make(chan []byte),
		handled:   make(chan struct{}, 1),
	}
	return c
}

// attach gives the connection its WebSocket once the upgrade succeeded and
// lets its writer run (frames may already be queued: see serveWS).
func (c *Conn) attach(ws *websocket.Conn) {
	c.ws = ws
	c.attached.Store(true)
	c.out.setStart(func() { go c.writeLoop() })
}

// deliver queues a frame; a full queue makes this a slow consumer.
func (c *Conn) deliver(frame []byte) {
	if ok, overflow := c.out.push(frame); !ok && overflow {
		c.close(protocol.CloseSlowConsumer, "slow consumer: outbound queue overflowed; reconnect and resume with since")
	}
}

// close ends the connection with a code; the first call wins. The writer
// sends what is queued (unless the queue overflowed), then the close frame.
func (c *Conn) close(code int, text string) {
	c.closeOnce.Do(func() {
		c.closeCode, c.closeText = code, text
		c.out.close()
		close(c.closing)
		c.lifeMu.Lock()
		if c.lifeCancel != nil {
			c.lifeCancel()
		}
		c.lifeMu.Unlock()
		c.wake() // a parked connection has no reader to see it
		if code == protocol.CloseSlowConsumer {
			// The writer is probably blocked on a full socket: cut that write
			// short now instead of holding the connection for WriteTimeout.
			// The close frame after it is best effort.
			if c.attached.Load() {
				_ = c.ws.NetConn().SetWriteDeadline(time.Now())
			}
		}
	})
}

// lifeCtx is the connection's context, cancelled when it must end.
func (c *Conn) lifeCtx() context.Context {
	c.lifeMu.Lock()
	defer c.lifeMu.Unlock()
	if c.life == nil {
		c.life, c.lifeCancel = context.WithCancel(context.Background())
		select {
		case <-c.closing: // closed before anyone asked
			c.lifeCancel()
		default:
		}
	}
	return c.life
}

// serve starts the connection's life after the upgrade: pings, presence,
// then reading. Reading runs on a goroutine only while there is something to
// read: an idle connection is parked in the edge's poller (Linux) with no
// goroutine at all, and resumed when its socket becomes readable. Whichever
// reader sees the end tears the connection down.
func (c *Conn) serve() {
	cfg := &c.e.cfg
	c.fr = newFrameReader(c.ws.NetConn(), cfg.ReadTimeout, cfg.MessageTimeout, func(payload []byte) error {
		// Pings cost the edge a write each: past the request rate they
		// go unanswered (RFC 6455 §5.5.3 lets a pong answer only the
		// latest) and count as abuse.
		if !c.pingLimit.Allow() {
			c.strike()
			return nil
		}
		return c.ws.WriteControl(websocket.PongMessage, payload, time.Now().Add(cfg.WriteTimeout))
	})
	c.rc = c.fr.rc
	c.fr.deadline()
	c.schedulePing()
	c.e.presence.connected(c)
	c.readOn(false)
}

// errParked ends a reader whose connection is now waiting in the poller.
var errParked = errors.New("parked")

// readOn reads until the connection is idle (it parks) or ends (teardown).
// woken says the poller saw the socket readable (or hung up): read before
// parking again, or an EOF would wake us forever.
func (c *Conn) readOn(woken bool) {
	defer func() {
		if v := recover(); v != nil {
			c.e.recovered("read", v, c.log)
			c.close(websocket.CloseInternalServerErr, "internal error")
			c.teardown() // at most once: a panic inside teardown ends here
		}
	}()
	err := c.readLoop(woken)
	if errors.Is(err, errParked) {
		return
	}
	if err != nil && !isExpectedClose(err) {
		c.log.Debug("read ended", "err", err)
	}
	c.teardown()
}

// wake resumes a parked connection: its socket is readable, or it must end.
func (c *Conn) wake() {
	if c.parked.CompareAndSwap(true, false) {
		go c.readOn(true)
	}
}

// park hands an idle connection to the poller; false means it cannot (no
// poller, not a socket) and the reader goes on itself.
func (c *Conn) park() bool {
	p := c.e.poller
	if p == nil || c.rc == nil {
		return false
	}
	c.fr.release()
	a := p.prepare(c)
	c.parked.Store(true) // from here on c may belong to another reader
	if err := p.arm(c.rc, a); err != nil {
		c.log.Debug("cannot park", "err", err)
		// Take c back, unless a close's wake already did.
		return !c.parked.CompareAndSwap(true, false)
	}
	// A close that came while we parked may have found nobody to wake.
	select {
	case <-c.closing:
		// Either we take the connection back, or the closer's wake did.
		return !c.parked.CompareAndSwap(true, false)
	default:
		return true
	}
}

// teardown ends the connection once its reader is done. It runs once; the
// edge forgets the connection even if something in it panics.
func (c *Conn) teardown() {
	if !c.tornDown.CompareAndSwap(false, true) {
		return
	}
	defer c.e.connGone(c)
	c.close(websocket.CloseNormalClosure, "")
	<-c.done
	c.stopPing()
	if c.tokenTimer != nil {
		c.tokenTimer.Stop()
	}
	if c.e.poller != nil {
		c.e.poller.forget(c)
	}
	c.fr.release()
	// close cancelled the long resumes; wait for them, so that none
	// outlives the connection and their consumers are deleted.
	for _, rp := range c.replays {
		rp.stop()
	}
	c.replays = nil
	c.e.presence.disconnected(c)
	for _, r := range c.rooms {
		c.e.hub.Leave(r, c)
	}
	c.e.metrics.Subscriptions.Sub(float64(len(c.rooms)))
	for _, r := range c.personal {
		c.e.hub.Leave(r, c)
	}
	c.rooms = nil
	// Last, so the linger delays neither leaves nor presence; before
	// connGone, so a drain ends with every socket closed.
	c.closeSocket()
	c.log.Debug("disconnected", "code", c.closeCode)
}

// joinPersonal puts the connection in its user's DM topic and the broadcast
// topic: these start live, there is nothing to resume.
func (c *Conn) joinPersonal() error {
	for _, topic := range []string{dmTopic(c.ident.User), broadcastTopic} {
		r, err := c.e.hub.Join(topic, c, c.e.cfg.MaxQueuedMsgs)
		if err != nil {
			c.leavePersonal()
			return fmt.Errorf("join %s: %w", topic, err)
		}
		c.personal = append(c.personal, r)
		r.start(c, 0)
	}
	return nil
}

func (c *Conn) leavePersonal() {
	for _, r := range c.personal {
		c.e.hub.Leave(r, c)
	}
	c.personal = nil
}

func isExpectedClose(err error) bool {
	return websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived) ||
		errors.Is(err, io.EOF) || errors.Is(err, websocket.ErrCloseSent)
}

func (c *Conn) readLoop(woken bool) error {
	cfg := &c.e.cfg
	fr := c.fr
	for {
		select {
		case <-c.closing:
			return nil
		default:
		}
		if fr.empty() {
			if !woken && c.park() {
				return errParked
			}
			woken = false
			// No poller: wait here, in as shallow a call as possible.
			if err := fr.idle(); err != nil {
				return err
			}
		}
		m, err := fr.next(cfg.MaxFrameBytes, cfg.HardFrameLimit)
		if err != nil {
			if code, text, ok := readCloseFor(err); ok {
				c.close(code, text)
				return nil
			}
			return err
		}
		if m.control {
			continue
		}
		c.e.metrics.FramesIn.Inc()
		c.e.metrics.BytesIn.Add(float64(m.size))
		switch {
		case !m.text:
			c.replyErr(0, fmt.Errorf("%w: binary frames are not supported; send JSON in text frames", protocol.ErrBadRequest))
		case m.tooLarge:
			// The connection stays: the message was read and discarded.
			c.replyErr(0, fmt.Errorf("%w: frame of %d bytes exceeds the limit of %d", protocol.ErrTooLarge, m.size, cfg.MaxFrameBytes))
			c.strike()
		default:
			c.handleFrame(m.data)
		}
	}
}

// handleFrame runs the frame's requests on a handler goroutine while the
// reader waits: requests keep their order and stay single-threaded, but the
// deep stack they need (JSON, NATS, JetStream) lives on the handler, which
// ends after a second without requests. An idle connection is then only its
// reader, parked in a read with a small stack: at 100,000 idle connections
// that is most of the edge's memory.
func (c *Conn) handleFrame(frame []byte) {
	select {
	case c.frames <- frame: // a handler is waiting for the next frame
	default:
		go c.handlerLoop(frame)
	}
	<-c.handled
}

// handlerIdle is how long a handler goroutine waits for the next frame.
const handlerIdle = time.Second

func (c *Conn) handlerLoop(frame []byte) {
	idle := time.NewTimer(handlerIdle)
	defer idle.Stop()
	for {
		c.handleLines(frame)
		c.handled <- struct{}{} // also after a panic: the reader waits for it
		idle.Reset(handlerIdle)
		select {
		case frame = <-c.frames:
		case <-idle.C:
			return
		case <-c.closing:
			return
		}
	}
}

// handleLines handles a frame's requests; a panic in one closes the
// connection (1011).
func (c *Conn) handleLines(frame []byte) {
	defer c.contain("handle")
	protocol.SplitFrame(frame, c.handle)
}

// strike counts abuse; too much in one window ends the connection.
func (c *Conn) strike() {
	now := time.Now()
	if now.Sub(c.strikeAt) > 10*time.Second {
		c.strikeAt, c.strikes = now, 0
	}
	c.strikes++
	if c.strikes > c.e.cfg.MaxStrikes {
		c.log.Info("closing abusive connection", "strikes", c.strikes)
		c.close(protocol.ClosePolicyViolation, "policy violation: too many rejected requests")
	}
}

func (c *Conn) handle(line []byte) {
	var req protocol.Request
	if err := protocol.DecodeRequest(line, &req); err != nil {
		c.replyErr(req.ID, fmt.Errorf("%w: malformed request: %s", protocol.ErrBadRequest, jsonProblem(err)))
		c.count("invalid", protocol.CodeBadRequest)
		return
	}
	if !c.reqLimit.Allow() {
		c.replyErr(req.ID, fmt.Errorf("%w: more than %g requests per second", protocol.ErrRateLimited, c.e.cfg.RequestRate))
		c.count(req.Op, protocol.CodeRateLimited)
		c.strike()
		return
	}
	if c.draining.Load() {
		c.replyErr(req.ID, fmt.Errorf("%w: edge is shutting down; reconnect to another edge", protocol.ErrUnavailable))
		return
	}
	if h := c.e.requestHook.Load(); h != nil {
		(*h)(req.Op)
	}
	var err error
	switch req.Op {
	case protocol.OpSub:
		err = c.subscribe(&req)
	case protocol.OpUnsub:
		err = c.unsubscribe(&req)
	case protocol.OpPub:
		err = c.publish(&req)
	case protocol.OpPing:
		c.reply(protocol.Reply{ID: req.ID, OK: true})
	case protocol.OpHistory:
		err = c.history(&req)
	case protocol.OpPresence:
		err = c.presence(&req)
	case "":
		err = fmt.Errorf("%w: op is required", protocol.ErrBadRequest)
	default:
		err = fmt.Errorf("%w: unknown op %q", protocol.ErrBadRequest, truncateOp(req.Op))
	}
	if err != nil {
		c.replyErr(req.ID, err)
		c.count(req.Op, protocol.ErrorReply(0, err).Error.Code)
		return
	}
	if req.Op != protocol.OpPub { // a pub is counted when its ack arrives
		c.count(req.Op, "ok")
	}
}

func (c *Conn) count(op string, result protocol.Code) {
	switch op {
	case protocol.OpSub, protocol.OpUnsub, protocol.OpPub, protocol.OpPing, protocol.OpHistory, protocol.OpPresence:
	default:
		op = "invalid" // never let clients mint label values
	}
	c.e.metrics.Requests.WithLabelValues(op, string(result)).Inc()
}

func truncateOp(op string) string {
	if len(op) > 32 {
		return op[:32] + "…"
	}
	return op
}

// jsonProblem keeps decoder errors short and free of the client's bytes.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return "a request must be a JSON object"
		}
		return fmt.Sprintf("field %q must be %s", typ.Field, jsonKind(typ.Type))
	}
	return "not a JSON object"
}

// jsonKind names a Go type the way the protocol document does.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct, reflect.Map:
		return "a JSON object"
	case reflect.Slice, reflect.Array:
		return "a JSON array"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "a " + t.Kind().String()
}

func (c *Conn) reply(r protocol.Reply) {
	b, err := json.Marshal(r)
	if err != nil {
		c.log.Error("encode reply", "err", err)
		return
	}
	c.deliver(b)
}

func (c *Conn) replyErr(id int64, err error) {
	if errors.Is(err, protocol.ErrInternal) || protocol.ErrorReply(0, err).Error.Code == protocol.CodeInternal {
		c.log.Error("request failed", "err", err)
	}
	c.reply(protocol.ErrorReply(id, err))
}

// writeLoop runs while there is something to send (see outbox): queued
// frames, several per WebSocket message when the client is behind, a due
// ping, or the connection's end.
func (c *Conn) writeLoop() {
	defer func() {
		if v := recover(); v != nil {
			c.e.recovered("write", v, c.log)
			c.close(websocket.CloseInternalServerErr, "internal error")
			c.ws.Close()
			c.markDone()
		}
	}()
	cfg := &c.e.cfg
	var spare [][]byte
	var linger *time.Timer
	for {
		if cfg.WriteDelay > 0 {
			time.Sleep(cfg.WriteDelay) // let more pushes join this write
		}
		frames, ping, empty, closed := c.out.take(spare)
		switch {
		case empty:
			if linger == nil {
				linger = time.NewTimer(writerLinger)
			} else {
				linger.Reset(writerLinger)
			}
			select {
			case <-c.out.wake:
			case <-linger.C:
				if c.out.retire() {
					return
				}
			}
			continue
		case closed:
			if linger != nil {
				linger.Stop()
			}
			c.finish(frames)
			return
		}
		if ping {
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(cfg.WriteTimeout)); err != nil {
				c.writeFailed(err)
				return
			}
		}
		if err := c.writeBatch(frames); err != nil {
			c.writeFailed(err)
			return
		}
		clear(frames)
		spare = frames
	}
}

// writerLinger is how long an idle writer waits for more before it ends:
// long enough that a connection receiving a steady stream keeps one writer,
// short enough that idle connections hold none.
const writerLinger = time.Second

// schedulePing asks for a ping every PingInterval until the connection ends.
// Each tick schedules the next (no goroutine waits between pings).
func (c *Conn) schedulePing() {
	var tick func()
	tick = func() {
		defer c.contain("timer")
		select {
		case <-c.closing:
			return
		default:
		}
		// A parked connection has no read deadline: silence is checked
		// here. A live client answers pings, which moves lastRead.
		if silent := time.Since(c.fr.lastRead()); silent > c.e.cfg.ReadTimeout {
			c.log.Debug("read timeout", "silent", silent)
			c.close(websocket.CloseGoingAway, "no frame or pong within the read timeout")
			return
		}
		c.out.pingDue()
		c.pinger.Store(time.AfterFunc(c.e.cfg.PingInterval, tick))
	}
	c.pinger.Store(time.AfterFunc(c.e.cfg.PingInterval, tick))
}

func (c *Conn) stopPing() {
	if t := c.pinger.Load(); t != nil {
		t.Stop()
	}
}

// writeFailed ends the connection after a failed write: no close frame, the
// socket is failing or full.
func (c *Conn) writeFailed(err error) {
	c.close(websocket.CloseAbnormalClosure, "")
	c.log.Debug("write failed", "err", err, "close_code", c.closeCode)
	c.e.metrics.Disconnects.WithLabelValues(closeReason(c.closeCode)).Inc()
	c.ws.Close()
	c.markDone()
}

// markDone says the writer has finished (once, whichever way it ended).
func (c *Conn) markDone() { c.doneOnce.Do(func() { close(c.done) }) }

// finish sends what is queued (unless the client was too slow for it),
// then says goodbye with the close code.
func (c *Conn) finish(frames [][]byte) {
	defer c.markDone()
	if c.closeCode == websocket.CloseAbnormalClosure {
		c.ws.Close()
		return
	}
	if c.closeCode != protocol.CloseSlowConsumer {
		_ = c.writeBatch(frames)
	}
	reason := c.closeText
	if len(reason) > 120 { // control frames carry at most 125 bytes
		reason = reason[:120]
	}
	msg := websocket.FormatCloseMessage(c.closeCode, reason)
	_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.e.cfg.WriteTimeout))
	c.e.metrics.Disconnects.WithLabelValues(closeReason(c.closeCode)).Inc()
	// Half-close: the close frame is followed by FIN, and the reader
	// (teardown) closes the socket once the client has closed its side or
	// closeLinger has passed. Closing at once while the client's frames are
	// still unread would reset the connection, and a reset can destroy the
	// close frame before the client reads it (a flooding client, or one
	// cut off by the hard frame limit, would never see 4004 or 1009).
	nc := c.ws.NetConn()
	if hc, ok := nc.(interface{ CloseWrite() error }); ok && hc.CloseWrite() == nil {
		_ = nc.SetReadDeadline(time.Now().Add(closeLinger))
		return
	}
	c.ws.Close()
}

// closeLinger bounds how long a closed connection waits for the client to
// close its side, and lingerBytes how much it reads and discards meanwhile.
const (
	closeLinger = 2 * time.Second
	lingerBytes = 4 << 20
)

// closeSocket ends the socket after the writer finished: it reads and
// discards what the client still sends until the client closes its side
// (or closeLinger passes, or it sent lingerBytes), then closes.
func (c *Conn) closeSocket() {
	nc := c.ws.NetConn()
	_ = nc.SetReadDeadline(time.Now().Add(closeLinger))
	_, _ = io.Copy(io.Discard, io.LimitReader(nc, lingerBytes))
	_ = nc.Close()
}

func closeReason(code int) string {
	switch code {
	case protocol.CloseSlowConsumer:
		return "slow_consumer"
	case protocol.CloseTokenExpired:
		return "token_expired"
	case protocol.CloseShuttingDown:
		return "shutdown"
	case protocol.ClosePolicyViolation:
		return "policy"
	case protocol.CloseTryAgainLater:
		return "replay_failed"
	case websocket.CloseNormalClosure:
		return "client"
	}
	return "error"
}

var newline = []byte{protocol.Separator}

// writeBatch writes frames as few WebSocket messages as the frame limit
// allows: one syscall-sized write for many small pushes.
func (c *Conn) writeBatch(frames [][]byte) error {
	cfg := &c.e.cfg
	for len(frames) > 0 {
		_ = c.ws.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
		w, err := c.ws.NextWriter(websocket.TextMessage)
		if err != nil {
			return err
		}
		size := 0
		n := 0
		for n < len(frames) && (n == 0 || size+1+len(frames[n]) <= cfg.MaxOutFrameBytes) {
			if n > 0 {
				if _, err := w.Write(newline); err != nil {
					return err
				}
				size++
			}
			if _, err := w.Write(frames[n]); err != nil {
				return err
			}
			size += len(frames[n])
			n++
		}
		if err := w.Close(); err != nil {
			return err
		}
		c.e.metrics.FramesOut.Inc()
		c.e.metrics.BytesOut.Add(float64(size))
		frames = frames[n:]
	}
	return nil
}
