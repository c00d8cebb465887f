package edge_test

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// WebSocket opcodes, for frames the tests build by hand.
const (
	opCont  = 0x0
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
)

// rawFrame is a masked client frame whose header announces length (which
// may differ from len(payload): an attacker's header lies).
func rawFrame(op byte, fin bool, length uint64, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch {
	case length < 126:
		b = append(b, 0x80|byte(length))
	case length <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(length))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, length)
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

// rawConn is an upgraded connection the test writes raw frames to.
type rawConn struct {
	t  *testing.T
	ws *websocket.Conn
}

func dialRaw(t *testing.T, e *edge.Edge, user string) *rawConn {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(edgetest.URL(e)+"?user="+user, nil)
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { ws.Close() })
	return &rawConn{t: t, ws: ws}
}

func (r *rawConn) write(frames ...[]byte) {
	r.t.Helper()
	for _, f := range frames {
		if _, err := r.ws.NetConn().Write(f); err != nil {
			r.t.Fatalf("write raw frame: %v", err)
		}
	}
}

// closeCode reads until the edge closes and returns its close code (-1:
// the connection ended without a close frame).
func (r *rawConn) closeCode() int {
	r.t.Helper()
	_ = r.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := r.ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				r.t.Fatal("the edge did not close the connection")
			}
			return -1
		}
	}
}

// alive checks that the edge still serves a new connection.
func alive(t *testing.T, e *edge.Edge) {
	t.Helper()
	c := edgetest.Dial(t, e, "bystander")
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatalf("the edge no longer serves others: %v", err)
	}
}

// A continuation frame announcing a length near 2^63 once overflowed the
// reader's size check and panicked, taking the whole process down. Every
// announced length is compared with what is left of the limit instead.
func TestHugeFrameLengthsCloseOnlyThatConnection(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	other := edgetest.Dial(t, e, "other")
	for _, tc := range []struct {
		name   string
		frames [][]byte
		want   int
	}{
		{"continuation near 2^63", [][]byte{
			rawFrame(opText, false, 5, []byte(`{"id"`)),
			rawFrame(opCont, true, 1<<63-1, []byte("xx")),
		}, websocket.CloseMessageTooBig},
		{"first frame near 2^63", [][]byte{rawFrame(opText, true, 1<<63-1, []byte("xx"))}, websocket.CloseMessageTooBig},
		{"continuation that wraps an int", [][]byte{
			rawFrame(opText, false, 60000, make([]byte, 60000)),
			rawFrame(opCont, true, 1<<63-30000, nil),
		}, websocket.CloseMessageTooBig},
		{"length with the top bit set", [][]byte{rawFrame(opText, true, 1<<63, nil)}, websocket.CloseProtocolError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, e, "attacker")
			c.write(tc.frames...)
			if code := c.closeCode(); code != tc.want {
				t.Fatalf("close code %d, want %d", code, tc.want)
			}
			if err := other.Ping(ctxT(t)); err != nil {
				t.Fatalf("another connection died with it: %v", err)
			}
			alive(t, e)
		})
	}
}

// Text that is not UTF-8 is refused with 1007 (RFC 6455 §8.1) before it
// becomes a request, so it is never stored and never pushed to browsers,
// which would fail their connection on it.
func TestInvalidUTF8IsRefusedAndNeverStored(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	js := natstest.JetStream(t, srv.URL())
	for _, tc := range []struct {
		name   string
		frames [][]byte
	}{
		{"one frame", [][]byte{rawFrame(opText, true, 0, nil)}},
		{"split rune across fragments", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := []byte(`{"id":1,"op":"pub","room":"utf","msg_id":"bad","data":"` + "\xff\xfe" + `"}`)
			frames := [][]byte{rawFrame(opText, true, uint64(len(pub)), pub)}
			if tc.frames == nil {
				// A valid rune split between fragments is fine; one that
				// never completes is not.
				a, b := pub[:len(pub)-4], pub[len(pub)-4:]
				frames = [][]byte{rawFrame(opText, false, uint64(len(a)), a), rawFrame(opCont, true, uint64(len(b)), b)}
			}
			c := dialRaw(t, e, "mallory")
			c.write(frames...)
			if code := c.closeCode(); code != websocket.CloseInvalidFramePayloadData {
				t.Fatalf("close code %d, want 1007", code)
			}
		})
	}
	// A rune split between fragments is still one valid message.
	c := dialRaw(t, e, "alice")
	pub := []byte(`{"id":1,"op":"pub","room":"utf","msg_id":"ok","data":"h` + "é" + `llo"}`)
	cut := strings.Index(string(pub), "é") + 1 // inside the two-byte rune
	c.write(rawFrame(opText, false, uint64(cut), pub[:cut]), rawFrame(opCont, true, uint64(len(pub)-cut), pub[cut:]))
	_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, b, err := c.ws.ReadMessage()
	if err != nil || !strings.Contains(string(b), `"ok":true`) {
		t.Fatalf("fragmented valid UTF-8: %s %v", b, err)
	}
	if seqs := storedSeqs(t, js, pjs.RoomSubject("utf"), 0); len(seqs) != 1 {
		t.Fatalf("stored %v, want exactly the valid message", seqs)
	}
}

// Close frames that break RFC 6455 §5.5.1/§7.4 are answered 1002 or 1007,
// valid ones are echoed.
func TestInvalidCloseFrames(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	code := func(c int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(c)) }
	for _, tc := range []struct {
		name    string
		payload []byte
		want    int
	}{
		{"one byte", []byte{3}, websocket.CloseProtocolError},
		{"reserved 1005", code(1005), websocket.CloseProtocolError},
		{"reserved 1006", code(1006), websocket.CloseProtocolError},
		{"unassigned 999", code(999), websocket.CloseProtocolError},
		{"unassigned 2000", code(2000), websocket.CloseProtocolError},
		{"reason not UTF-8", append(code(1000), 0xff), websocket.CloseInvalidFramePayloadData},
		{"normal", code(1000), websocket.CloseNormalClosure},
		{"private 4321", append(code(4321), "bye"...), websocket.CloseNormalClosure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, e, "closer")
			c.write(rawFrame(opClose, true, uint64(len(tc.payload)), tc.payload))
			if got := c.closeCode(); got != tc.want {
				t.Fatalf("close code %d, want %d", got, tc.want)
			}
		})
	}
	alive(t, e)
}

// WebSocket pings cost the edge a write each: a flood is answered only up to
// the request rate and then closed as abuse.
func TestPingFloodIsClosed(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.RequestRate, c.RequestBurst, c.MaxStrikes = 10, 10, 20
	})
	c := dialRaw(t, e, "pinger")
	pongs := 0
	c.ws.SetPongHandler(func(string) error { pongs++; return nil })
	flood := make([]byte, 0, 500*6)
	for range 500 {
		flood = append(flood, rawFrame(opPing, true, 0, nil)...)
	}
	c.write(flood)
	if code := c.closeCode(); code != protocol.ClosePolicyViolation {
		t.Fatalf("close code %d, want %d", code, protocol.ClosePolicyViolation)
	}
	if pongs > 50 {
		t.Fatalf("%d pongs for a flood of 500 pings at 10/s", pongs)
	}
	alive(t, e)
}

// A client that announces a large frame and then sends it byte by byte (or
// not at all) holds a buffer; it must finish within the message timeout,
// not the whole read timeout.
func TestTrickledMessageTimesOut(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MessageTimeout = 300 * time.Millisecond })
	c := dialRaw(t, e, "trickler")
	began := time.Now()
	c.write(rawFrame(opText, true, 60000, []byte(`{"id":1,`)))
	if code := c.closeCode(); code != protocol.ClosePolicyViolation {
		t.Fatalf("close code %d, want %d", code, protocol.ClosePolicyViolation)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("closed after %v; the read timeout, not the message timeout, ended it", took)
	}
	// A slow but complete message within the timeout is fine.
	c2 := dialRaw(t, e, "patient")
	ping := []byte(`{"id":7,"op":"ping"}`)
	c2.write(rawFrame(opText, false, 5, ping[:5]))
	c2.write(rawFrame(opCont, true, uint64(len(ping)-5), ping[5:]))
	_ = c2.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, b, err := c2.ws.ReadMessage(); err != nil || !strings.Contains(string(b), `"id":7`) {
		t.Fatalf("complete message: %s %v", b, err)
	}
}

// A panic while serving one connection closes that connection (1011), is
// counted, and leaves the edge serving everyone else.
func TestPanicClosesOnlyThatConnection(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	edge.SetRequestHook(e, func(op string) {
		if op == "boom" {
			panic("a bug met while handling a request")
		}
	})
	other := edgetest.Dial(t, e, "other")
	subscribe(t, other, "calm")
	c := dialRaw(t, e, "unlucky")
	boom := []byte(`{"id":1,"op":"boom"}`)
	c.write(rawFrame(opText, true, uint64(len(boom)), boom))
	if code := c.closeCode(); code != websocket.CloseInternalServerErr {
		t.Fatalf("close code %d, want 1011", code)
	}
	if err := other.Ping(ctxT(t)); err != nil {
		t.Fatalf("another connection died with it: %v", err)
	}
	if _, err := other.Publish(ctxT(t), "calm", "after-panic", map[string]string{"still": "here"}); err != nil {
		t.Fatalf("publish after the panic: %v", err)
	}
	if m := edgetest.Next(t, other); m.MsgID != "after-panic" {
		t.Fatalf("got %+v", m)
	}
	if n := edgetest.Metric(t, e, `parley_edge_panics_total{where="handle"}`); n != 1 {
		t.Fatalf("parley_edge_panics_total{where=handle} = %v, want 1", n)
	}
	alive(t, e)
}
