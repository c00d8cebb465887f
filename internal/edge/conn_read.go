package edge

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-mesh/parley/protocol"
)

// errParked ends a reader whose connection is now waiting in the poller.
var errParked = errors.New("parked")

// readOn reads until the connection is idle (it parks) or ends (teardown).
// woken says the poller saw the socket readable (or hung up): read before
// parking again, or an EOF would wake us forever.
func (c *Conn) readOn(woken bool) {
	defer func() {
		if v := recover(); v != nil {
			c.e.recovered("read", v, c.logger())
			c.close(websocket.CloseInternalServerErr, "internal error")
			c.teardown() // at most once: a panic inside teardown ends here
		}
	}()
	err := c.readLoop(woken)
	if errors.Is(err, errParked) {
		return
	}
	if err != nil && !isExpectedClose(err) {
		c.debug("read ended", "err", err)
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
		c.debug("cannot park", "err", err)
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
		case m.text != (c.wsType == websocket.TextMessage):
			// Each connection takes one frame type: text everywhere but
			// on Centrifugo's Protobuf connections, which take binary only.
			// (A Centrifugo connection answers this error by closing.)
			c.replyErr(0, c.frameTypeErr())
		case m.tooLarge:
			// The connection stays: the message was read and discarded.
			c.replyErr(0, fmt.Errorf("%w: frame of %d bytes exceeds the limit of %d", protocol.ErrTooLarge, m.size, cfg.MaxFrameBytes))
			c.strike()
		default:
			c.handleFrame(m.data)
		}
	}
}

// frameTypeErr is the error for a data frame of the other type.
func (c *Conn) frameTypeErr() error {
	if c.wsType == websocket.BinaryMessage {
		return fmt.Errorf("%w: text frame on a Protobuf connection; send binary frames", protocol.ErrBadRequest)
	}
	return fmt.Errorf("%w: binary frames are not supported; send JSON in text frames", protocol.ErrBadRequest)
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
	if c.cf != nil {
		c.handleCentrifugo(frame)
		return
	}
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
		c.logger().Info("closing abusive connection", "strikes", c.strikes)
		c.close(protocol.ClosePolicyViolation, "policy violation: too many rejected requests")
	}
}
