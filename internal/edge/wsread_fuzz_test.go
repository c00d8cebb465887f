package edge

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// bytesConn is a net.Conn that reads a fixed byte string (then EOF) and
// accepts any deadline: the frame reader fed raw bytes, without a socket.
type bytesConn struct {
	r *bytes.Reader
}

func (c *bytesConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *bytesConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzFrameReader feeds arbitrary bytes to the client frame reader: it must
// never panic, never keep a message larger than keep, never accept one past
// hard, never hand on text that is not UTF-8, and never answer a ping with
// more than a control frame's 125 bytes.
func FuzzFrameReader(f *testing.F) {
	seeds := [][]byte{
		// A masked text frame "hi".
		{0x81, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2},
		// Fragmented: text without FIN, then a continuation.
		{0x01, 0x81, 0, 0, 0, 0, 'a', 0x80, 0x81, 0, 0, 0, 0, 'b'},
		// A ping between fragments.
		{0x01, 0x81, 0, 0, 0, 0, 'a', 0x89, 0x80, 0, 0, 0, 0, 0x80, 0x81, 0, 0, 0, 0, 'b'},
		// A continuation announcing 2^63-1 bytes (the overflow once fixed).
		{0x01, 0x81, 0, 0, 0, 0, 'a', 0x80, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0},
		// A 64-bit length with the top bit set.
		{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		// A 16-bit length of 60000 and too few bytes.
		{0x81, 0xfe, 0xea, 0x60, 0, 0, 0, 0, 'x'},
		// Invalid UTF-8 in a text frame, in a close reason; a 1-byte close.
		{0x81, 0x81, 0, 0, 0, 0, 0xff},
		{0x88, 0x83, 0, 0, 0, 0, 0x03, 0xe8, 0xff},
		{0x88, 0x81, 0, 0, 0, 0, 0x03},
		// An unmasked frame; a reserved opcode; RSV bits; a 126-byte ping.
		{0x81, 0x01, 'x'},
		{0x83, 0x80, 0, 0, 0, 0},
		{0xc1, 0x80, 0, 0, 0, 0},
		append([]byte{0x89, 0xfe, 0, 126, 0, 0, 0, 0}, make([]byte, 126)...),
		// A binary frame.
		{0x82, 0x81, 0, 0, 0, 0, 0},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	const keep, hard = 64, 256
	f.Fuzz(func(t *testing.T, in []byte) {
		fr := newFrameReader(&bytesConn{r: bytes.NewReader(in)}, time.Second, time.Second, func(p []byte) error {
			if len(p) > 125 {
				t.Fatalf("ping payload of %d bytes accepted", len(p))
			}
			return nil
		})
		defer fr.release()
		for range len(in) + 1 { // each message consumes at least one byte
			m, err := fr.next(keep, hard)
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					return
				}
				var ce *websocket.CloseError
				if _, _, ok := readCloseFor(err); !ok && !errors.As(err, &ce) {
					t.Fatalf("read error %v has no close code", err)
				}
				return
			}
			if m.control {
				continue
			}
			switch {
			case m.size > hard:
				t.Fatalf("message of %d bytes passed the hard limit %d", m.size, hard)
			case len(m.data) > keep || cap(m.data) > keep+growStep:
				t.Fatalf("message kept %d bytes (cap %d) past keep %d", len(m.data), cap(m.data), keep)
			case m.tooLarge && m.data != nil:
				t.Fatal("an oversize message kept its data")
			case !m.tooLarge && len(m.data) != m.size:
				t.Fatalf("kept %d bytes of a %d-byte message", len(m.data), m.size)
			case m.text && !m.tooLarge && !utf8.Valid(m.data):
				t.Fatal("text that is not UTF-8 handed on")
			}
		}
	})
}
