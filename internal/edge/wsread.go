package edge

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"github.com/parley-mesh/parley/protocol"
)

// The edge reads client frames itself (with gobwas/ws's frame primitives)
// instead of through gorilla/websocket, which still does the upgrade and
// every write. Reading in gorilla means parking deep inside its reader,
// holding its buffer: at 100,000 idle connections those stacks and buffers
// are most of the edge's memory. Here an idle connection waits for the
// socket to become readable in a shallow call, without a read buffer; a
// buffer comes from a pool when bytes arrive and goes back when they are
// consumed.

var readBufPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// frameReader reads one connection's client frames.
type frameReader struct {
	nc      net.Conn
	rc      syscall.RawConn // nil when the conn is not a socket (then reads just block)
	br      *bufio.Reader   // non-nil only while bytes are buffered
	timeout time.Duration
	// msgTimeout bounds the time from a message's first header to its end.
	msgTimeout time.Duration
	state      ws.State
	onPing     func(payload []byte) error
	last       atomic.Int64 // unix nanos of the last frame read
}

func newFrameReader(nc net.Conn, timeout, msgTimeout time.Duration, onPing func([]byte) error) *frameReader {
	fr := &frameReader{nc: nc, timeout: timeout, msgTimeout: min(timeout, msgTimeout), state: ws.StateServerSide, onPing: onPing}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			fr.rc = rc
		}
	}
	return fr
}

func (fr *frameReader) release() {
	if fr.br != nil {
		fr.br.Reset(nil)
		readBufPool.Put(fr.br)
		fr.br = nil
	}
}

// buffer makes sure bytes can be read: with nothing buffered it waits (see
// idle), then takes a buffer from the pool.
func (fr *frameReader) buffer() error {
	if !fr.empty() {
		return nil
	}
	if err := fr.idle(); err != nil {
		return err
	}
	fr.br = readBufPool.Get().(*bufio.Reader)
	fr.br.Reset(fr.nc)
	return nil
}

// idle waits, without a buffer, until there is something to read (on a
// conn that is not a socket, it returns and the read itself blocks).
func (fr *frameReader) idle() error {
	if !fr.empty() {
		return nil
	}
	fr.release()
	if fr.rc == nil {
		return nil
	}
	return waitReadable(fr.rc)
}

// waitReadable parks until the socket has bytes (or EOF, or an error, or
// the read deadline). MSG_PEEK keeps the bytes for the read that follows.
func waitReadable(rc syscall.RawConn) error {
	var peek [1]byte
	err := rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return err != unix.EAGAIN
	})
	return err
}

func (fr *frameReader) deadline() {
	now := time.Now()
	fr.last.Store(now.UnixNano())
	_ = fr.nc.SetReadDeadline(now.Add(fr.timeout))
}

func (fr *frameReader) lastRead() time.Time { return time.Unix(0, fr.last.Load()) }

// empty says whether nothing read is waiting in the buffer.
func (fr *frameReader) empty() bool { return fr.br == nil || fr.br.Buffered() == 0 }

// Read errors that end a connection with a close code of their own.
var (
	// errTooLarge: the message passed the hard limit (1009).
	errTooLarge = errors.New("message above the hard frame limit")
	// errInvalidUTF8: a text message or close reason that is not UTF-8
	// (RFC 6455 §8.1: 1007). Relaying it would poison every spec-following
	// client that receives it.
	errInvalidUTF8 = errors.New("text frame is not valid UTF-8")
	// errBadClose: a close frame with a 1-byte payload or a code a client
	// must not send (1002).
	errBadClose = errors.New("invalid close frame")
	// errMessageTimeout: a message did not arrive whole within the message
	// timeout (4004: holding a buffer open by trickling is abuse).
	errMessageTimeout = errors.New("message not received whole in time")
)

// message is one complete client message.
type message struct {
	control  bool // only control frames (ping, pong) were read
	text     bool
	data     []byte // nil when the message was larger than keep and discarded
	size     int
	tooLarge bool
}

// next returns the next complete message, answering pings and noting pongs
// on the way. keep is the largest message kept (larger ones are read and
// discarded: the connection survives); hard is the limit past which the
// connection ends (errTooLarge). A close from the client comes back as a
// *websocket.CloseError.
func (fr *frameReader) next(keep, hard int) (message, error) {
	var m message
	started := false
	var msgDeadline time.Time // set when the message's first header arrives
	for {
		if err := fr.buffer(); err != nil {
			return m, msgErr(err, started)
		}
		h, err := ws.ReadHeader(fr.br)
		if err != nil {
			return m, msgErr(err, started)
		}
		if err := ws.CheckHeader(h, fr.state); err != nil {
			return m, err
		}
		fr.deadline()
		if started {
			_ = fr.nc.SetReadDeadline(msgDeadline)
		}
		if h.OpCode.IsControl() {
			payload := make([]byte, h.Length)
			if _, err := io.ReadFull(fr.br, payload); err != nil {
				return m, err
			}
			ws.Cipher(payload, h.Mask, 0)
			switch h.OpCode {
			case ws.OpPing:
				if err := fr.onPing(payload); err != nil {
					return m, err
				}
			case ws.OpClose:
				// RFC 6455 §5.5.1: no payload, or a 2-byte code and a UTF-8
				// reason. Anything else is answered 1002 or 1007.
				if len(payload) == 1 {
					return m, errBadClose
				}
				code, reason := ws.ParseCloseFrameData(payload)
				if code == 0 {
					code = websocket.CloseNoStatusReceived
				} else if !validCloseCode(int(code)) {
					return m, errBadClose
				}
				if !utf8.ValidString(reason) {
					return m, errInvalidUTF8
				}
				return m, &websocket.CloseError{Code: int(code), Text: reason}
			} // a pong only proves the client is alive: the deadline moved
			if !started && fr.empty() {
				// Nothing more to read now: let the caller park the
				// connection rather than wait in here.
				return message{control: true}, nil
			}
			continue
		}
		if !started {
			m.text = h.OpCode == ws.OpText
			started = true
			// The whole message, however fragmented, must arrive within
			// messageTimeout of its first header: a client that announces
			// a large frame and trickles it does not hold its buffer (or
			// its place in the reader) for the whole read timeout.
			msgDeadline = time.Now().Add(fr.msgTimeout)
			_ = fr.nc.SetReadDeadline(msgDeadline)
		}
		// Compare without adding: the length is the client's, up to 2^63-1,
		// and m.size plus it could wrap around past any limit.
		if h.Length > int64(hard-m.size) {
			return m, errTooLarge
		}
		n := int(h.Length)
		if m.size+n > keep || m.tooLarge {
			m.tooLarge, m.data = true, nil
			if _, err := fr.br.Discard(n); err != nil {
				return m, msgErr(err, true)
			}
		} else {
			off := len(m.data)
			var err error
			if m.data, err = readGrowing(fr.br, m.data, n); err != nil {
				return m, msgErr(err, true)
			}
			ws.Cipher(m.data[off:], h.Mask, 0)
		}
		m.size += n
		if h.Fin {
			fr.state = fr.state.Clear(ws.StateFragmented)
			fr.deadline()
			if m.text && !m.tooLarge && !utf8.Valid(m.data) {
				return m, errInvalidUTF8
			}
			return m, nil
		}
		fr.state = fr.state.Set(ws.StateFragmented)
	}
}

// msgErr names a read deadline that passed inside a message: the message
// timeout, not the client's silence.
func msgErr(err error, inMessage bool) error {
	if inMessage && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %w", errMessageTimeout, err)
	}
	return err
}

// growStep bounds how much a message's buffer grows ahead of the bytes that
// actually arrived: memory follows what the client sent, not what its frame
// header announced.
const growStep = 16 << 10

// readGrowing appends n bytes read from r to buf, growing it at most
// growStep ahead of the bytes read.
func readGrowing(r io.Reader, buf []byte, n int) ([]byte, error) {
	for n > 0 {
		step := min(n, growStep)
		off := len(buf)
		buf = slices.Grow(buf, step)[:off+step]
		if _, err := io.ReadFull(r, buf[off:]); err != nil {
			return buf[:off], err
		}
		n -= step
	}
	return buf, nil
}

// validCloseCode says whether a client may send code in a close frame
// (RFC 6455 §7.4): 1000-1003, 1007-1014 and the registered/private ranges;
// 1004-1006 and 1015 are reserved or only reported locally.
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// readCloseFor says which close a read error deserves, if any.
func readCloseFor(err error) (code int, text string, ok bool) {
	var pe ws.ProtocolError
	switch {
	case errors.Is(err, errTooLarge):
		return websocket.CloseMessageTooBig, "message too large", true
	case errors.Is(err, errInvalidUTF8):
		return websocket.CloseInvalidFramePayloadData, "text is not valid UTF-8", true
	case errors.Is(err, errMessageTimeout):
		return protocol.ClosePolicyViolation, "message not received whole within the message timeout", true
	case errors.Is(err, errBadClose):
		return websocket.CloseProtocolError, "invalid close frame", true
	case errors.As(err, &pe):
		return websocket.CloseProtocolError, fmt.Sprint(pe), true
	case errors.Is(err, ws.ErrHeaderLengthMSB), errors.Is(err, ws.ErrHeaderLengthUnexpected):
		return websocket.CloseProtocolError, "invalid frame length", true
	}
	return 0, "", false
}
