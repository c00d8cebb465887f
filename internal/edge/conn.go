package edge

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/protocol"
)

// Conn is one WebSocket client. Its code is split by concern: this file
// (lifecycle: fields, close, teardown), conn_read.go (reading, parking in
// the poller, the hand-off to a request handler), conn_request.go (one
// request's dispatch and its reply), conn_write.go (the writer, pings, the
// close handshake and linger).
//
// The goroutines of a connection, and what each owns:
//
//   - The reader: first the HTTP handler's goroutine (serveWS), later one
//     the poller starts when a parked connection's socket turns readable
//     (wake); never two at once. It owns fr, rc, pollID and pollAdded, and
//     hands each frame to the handler and waits for it (handleFrame).
//   - The handler (handlerLoop): runs requests one at a time while the
//     reader waits, and ends after handlerIdle without frames. It owns
//     rooms, replays and personal (joined before the first frame), and
//     strikes/strikeAt with the reader (they take turns, never at once).
//   - The writer (writeLoop): started by the outbox when there is
//     something to send and ending after writerLinger idle; it alone writes
//     data frames to ws. done is closed when it has finished for good.
//   - Long resumes (replay.go): one goroutine per room being replayed,
//     delivering through the outbox; each is in replays, stopped and
//     waited for by unsub or teardown.
//   - Timers: the ping tick (schedulePing) and the token expiry
//     (tokenTimer); they only read lastRead, queue a ping or close.
//   - Anyone may deliver (the hub's dispatchers and repair goroutines, the
//     publisher's acks, presence): deliver and reply only push to the
//     outbox, which has its own lock. Anyone may close: the first close
//     wins, cancels life and wakes a parked connection.
//
// Teardown (once, on the reader that sees the end) closes, waits for the
// writer (done), stops the timers and replays, leaves every room and
// presence, and then lingers on the socket for the client's close. After
// it, nothing of the connection runs.
type Conn struct {
	id    uint64
	e     *Edge
	ws    *websocket.Conn
	ident *auth.Identity
	// logp is the connection's logger, made on first use: most
	// connections never log, and slog's With formats its attributes up
	// front (a few hundred bytes and a twentieth of a connect storm's CPU).
	logp atomic.Pointer[slog.Logger]
	out  *outbox

	// rooms is touched only by the request handler (while the reader waits
	// for it) and by teardown, after both ended.
	rooms map[string]*room
	// replays are the long resumes of rooms (replay.go); same ownership
	// as rooms. An entry stays until unsub or teardown stops it.
	replays map[string]*replay
	// life is cancelled when the connection must end (close) or the edge
	// shuts down: the parent of every request's context and of work that
	// outlives one, such as a long resume. It exists only while such work
	// runs (workCtx counts it in lifeRefs): a child of the edge's context
	// costs a few hundred bytes, which an idle connection should not keep.
	lifeMu     sync.Mutex
	life       context.Context
	lifeCancel context.CancelFunc
	lifeRefs   int
	// personal are the DM and broadcast topics every connection is in.
	personal []*room
	// cf is set on a Centrifugo protocol connection (centrifugo.go): its
	// requests, replies and pushes are translated, everything else is the
	// same machinery. Nil on a Parley connection.
	cf *cfState
	// wsType is the WebSocket message type of the data frames the client
	// sends and is sent: text (JSON) but for Centrifugo's Protobuf format,
	// whose binary frames hold length-delimited replies (writeBatch). Set
	// before the writer starts, then read-only.
	wsType int

	// The rate limits. pubLimit and pingLimit are made on first use (most
	// connections never publish or ping: a limiter is ~80 B held per
	// connection); pubLimit is the handler's, pingLimit the reader's.
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
	fr        *frameReader
	rc        syscall.RawConn
	parked    atomic.Bool // waiting in the poller, no reader running
	pollID    int32
	pollAdded bool
	// The token's expiry (refresh.go): closing at exp and the expiring
	// push before it, on one timer; a refresh re-arms it.
	expiryMu   sync.Mutex
	tokenTimer *time.Timer
	frames     chan []byte   // reader → waiting handler (unbuffered)
	handled    chan struct{} // handler → reader: the frame is done
}

// debug logs at debug level without making the connection's logger when
// debug is off: every connection logs "connected" and "disconnected".
func (c *Conn) debug(msg string, args ...any) {
	if c.e.log.Enabled(context.Background(), slog.LevelDebug) {
		c.debug(msg, args...)
	}
}

// logger is the connection's logger (conn and user attached).
func (c *Conn) logger() *slog.Logger {
	if l := c.logp.Load(); l != nil {
		return l
	}
	l := c.e.log.With("conn", c.id, "user", c.ident.User)
	if !c.logp.CompareAndSwap(nil, l) {
		return c.logp.Load()
	}
	return l
}

func newConn(e *Edge, id uint64, ws *websocket.Conn, ident *auth.Identity) *Conn {
	cfg := &e.cfg
	c := &Conn{
		id:       id,
		e:        e,
		ws:       ws,
		ident:    ident,
		out:      newOutbox(cfg.MaxQueuedMsgs, cfg.MaxQueuedBytes, nil),
		rooms:    make(map[string]*room),
		reqLimit: rate.NewLimiter(rate.Limit(cfg.RequestRate), cfg.RequestBurst),
		closing:  make(chan struct{}),
		done:     make(chan struct{}),
		frames:   make(chan []byte),
		handled:  make(chan struct{}, 1),
		wsType:   websocket.TextMessage,
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
	if c.cf != nil {
		// Rooms and presence push Parley frames, encoded once for every
		// connection; a Centrifugo connection translates them here.
		if frame = c.cfPush(frame); frame == nil {
			return
		}
	}
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

// workCtx is a context for work done for the connection (a request, a long
// resume): it ends when the connection must end, when the edge shuts down,
// or after timeout (0: no timeout). done must be called when the work ends
// (more than once is fine); the connection's own context is let go of with
// the last piece of work.
func (c *Conn) workCtx(timeout time.Duration) (ctx context.Context, done context.CancelFunc) {
	c.lifeMu.Lock()
	if c.life == nil {
		c.life, c.lifeCancel = context.WithCancel(c.e.ctx)
		select {
		case <-c.closing: // closed before anyone asked
			c.lifeCancel()
		default:
		}
	}
	c.lifeRefs++
	life := c.life
	c.lifeMu.Unlock()
	var cancel context.CancelFunc
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(life, timeout)
	} else {
		ctx, cancel = context.WithCancel(life)
	}
	var once sync.Once
	return ctx, func() {
		cancel()
		once.Do(func() {
			c.lifeMu.Lock()
			defer c.lifeMu.Unlock()
			if c.lifeRefs--; c.lifeRefs == 0 {
				c.lifeCancel()
				c.life, c.lifeCancel = nil, nil
			}
		})
	}
}

// serve starts the connection's life after the upgrade: pings, presence,
// then reading. Reading runs on a goroutine only while there is something to
// read: an idle connection is parked in the edge's poller (Linux) with no
// goroutine at all, and resumed when its socket becomes readable. Whichever
// reader sees the end tears the connection down.
func (c *Conn) serve() {
	cfg := &c.e.cfg
	onPing := func(payload []byte) error {
		// Pings cost the edge a write each: past the request rate they
		// go unanswered (RFC 6455 §5.5.3 lets a pong answer only the
		// latest) and count as abuse.
		if c.pingLimit == nil {
			// Pings share the request budget's rate: a client pinging
			// faster than it may send requests is not keeping a
			// connection alive.
			c.pingLimit = rate.NewLimiter(rate.Limit(cfg.RequestRate), cfg.RequestBurst)
		}
		if !c.pingLimit.Allow() {
			c.strike()
			return nil
		}
		return c.ws.WriteControl(websocket.PongMessage, payload, time.Now().Add(cfg.WriteTimeout))
	}
	if c.fr == nil {
		c.fr = newFrameReader(c.ws.NetConn(), cfg.ReadTimeout, cfg.MessageTimeout, onPing)
	} else { // a Centrifugo connection read its connect command already
		c.fr.timeout, c.fr.onPing = cfg.ReadTimeout, onPing
	}
	c.rc = c.fr.rc
	c.fr.deadline()
	c.schedulePing()
	c.e.presence.connected(c)
	if c.cf != nil && c.cf.rest != nil {
		// Commands that came in the connect command's frame.
		rest := c.cf.rest
		c.cf.rest = nil
		c.handleFrame(rest)
	}
	c.readOn(false)
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
	c.stopExpiry()
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
	c.debug("disconnected", "code", c.closeCode)
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
