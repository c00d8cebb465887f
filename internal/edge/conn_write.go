package edge

import (
	"encoding/binary"
	"io"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parley-mesh/parley/protocol"
)

// writeLoop runs while there is something to send (see outbox): queued
// frames, several per WebSocket message when the client is behind, a due
// ping, or the connection's end.
func (c *Conn) writeLoop() {
	defer func() {
		if v := recover(); v != nil {
			c.e.recovered("write", v, c.logger())
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
			c.debug("read timeout", "silent", silent)
			c.close(websocket.CloseGoingAway, "no frame or pong within the read timeout")
			return
		}
		c.out.pingDue()
		if c.cf != nil {
			// Centrifugo's SDKs expect the server's own ping, an empty
			// reply, and answer it with an empty command.
			c.deliver(c.cf.ping())
		}
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
	c.debug("write failed", "err", err, "close_code", c.closeCode)
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
	msg := websocket.FormatCloseMessage(c.wireCloseCode(c.closeCode), reason)
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
// allows: one syscall-sized write for many small pushes. Text messages
// separate frames with '\n'; binary ones (Centrifugo's Protobuf format)
// prefix each with its length as a varint, the empty ping included.
func (c *Conn) writeBatch(frames [][]byte) error {
	cfg := &c.e.cfg
	delimited := c.wsType == websocket.BinaryMessage
	var prefix [binary.MaxVarintLen64]byte
	for len(frames) > 0 {
		_ = c.ws.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
		w, err := c.ws.NextWriter(c.wsType)
		if err != nil {
			return err
		}
		size := 0
		n := 0
		for n < len(frames) {
			var sep []byte
			switch {
			case delimited:
				sep = binary.AppendUvarint(prefix[:0], uint64(len(frames[n])))
			case n > 0:
				sep = newline
			}
			if n > 0 && size+len(sep)+len(frames[n]) > cfg.MaxOutFrameBytes {
				break
			}
			if len(sep) > 0 {
				if _, err := w.Write(sep); err != nil {
					return err
				}
				size += len(sep)
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
