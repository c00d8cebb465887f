package edge

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"
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
	state   ws.State
	onPing  func(payload []byte) error
	last    atomic.Int64 // unix nanos of the last frame read
}

func newFrameReader(nc net.Conn, timeout time.Duration, onPing func([]byte) error) *frameReader {
	fr := &frameReader{nc: nc, timeout: timeout, state: ws.StateServerSide, onPing: onPing}
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

// errTooLarge ends a connection whose message passed the hard limit.
var errTooLarge = errors.New("message above the hard frame limit")

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
	for {
		if err := fr.buffer(); err != nil {
			return m, err
		}
		h, err := ws.ReadHeader(fr.br)
		if err != nil {
			return m, err
		}
		if err := ws.CheckHeader(h, fr.state); err != nil {
			return m, err
		}
		fr.deadline()
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
				code, reason := ws.ParseCloseFrameData(payload)
				if code == 0 {
					code = websocket.CloseNoStatusReceived
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
		}
		if int64(m.size)+h.Length > int64(hard) {
			return m, errTooLarge
		}
		n := int(h.Length)
		if m.size+n > keep || m.tooLarge {
			m.tooLarge, m.data = true, nil
			if _, err := fr.br.Discard(n); err != nil {
				return m, err
			}
		} else {
			off := len(m.data)
			m.data = slices.Grow(m.data, n)[:off+n]
			if _, err := io.ReadFull(fr.br, m.data[off:]); err != nil {
				return m, err
			}
			ws.Cipher(m.data[off:], h.Mask, 0)
		}
		m.size += n
		if h.Fin {
			fr.state = fr.state.Clear(ws.StateFragmented)
			return m, nil
		}
		fr.state = fr.state.Set(ws.StateFragmented)
	}
}

// readCloseFor says which close a read error deserves, if any.
func readCloseFor(err error) (code int, text string, ok bool) {
	var pe ws.ProtocolError
	switch {
	case errors.Is(err, errTooLarge):
		return websocket.CloseMessageTooBig, "message too large", true
	case errors.As(err, &pe):
		return websocket.CloseProtocolError, fmt.Sprint(pe), true
	}
	return 0, "", false
}
