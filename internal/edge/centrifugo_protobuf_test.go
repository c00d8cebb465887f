package edge_test

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	cfp "github.com/centrifugal/protocol"
	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

// pbConn is a raw WebSocket speaking Centrifugo's Protobuf format, to send
// what no SDK would.
type pbConn struct {
	t  *testing.T
	ws *websocket.Conn
	// pings counts the server's pings seen (and answered) by read.
	pings int
	// queued are replies of a frame not read yet: the edge batches several
	// into one frame whenever the client is behind.
	queued []*cfp.Reply
}

func dialProtobuf(t *testing.T, e *edge.Edge) *pbConn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"centrifuge-protobuf"}}
	ws, _, err := d.Dial(centrifugoURL(e), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	if ws.Subprotocol() != "centrifuge-protobuf" {
		t.Fatalf("subprotocol %q, want centrifuge-protobuf", ws.Subprotocol())
	}
	return &pbConn{t: t, ws: ws}
}

// pbFrame is commands length-delimited in one frame.
func pbFrame(t *testing.T, cmds ...*cfp.Command) []byte {
	t.Helper()
	var frame []byte
	for _, c := range cmds {
		b, err := c.MarshalCF()
		if err != nil {
			t.Fatal(err)
		}
		frame = binary.AppendUvarint(frame, uint64(len(b)))
		frame = append(frame, b...)
	}
	return frame
}

func (p *pbConn) send(frame []byte) {
	p.t.Helper()
	if err := p.ws.WriteMessage(websocket.BinaryMessage, frame); err != nil {
		p.t.Fatal(err)
	}
}

// read is the next reply that is not a ping, answering pings with an empty
// command. Every frame must be binary and split exactly into replies.
func (p *pbConn) read() *cfp.Reply {
	p.t.Helper()
	for {
		if len(p.queued) > 0 {
			r := p.queued[0]
			p.queued = p.queued[1:]
			return r
		}
		_ = p.ws.SetReadDeadline(time.Now().Add(edgetest.Wait))
		typ, data, err := p.ws.ReadMessage()
		if err != nil {
			p.t.Fatal(err)
		}
		if typ != websocket.BinaryMessage {
			p.t.Fatalf("message type %d, want binary", typ)
		}
		for len(data) > 0 {
			l, n := binary.Uvarint(data)
			if n <= 0 || l > uint64(len(data)-n) {
				p.t.Fatalf("bad length prefix in % x", data)
			}
			r := &cfp.Reply{}
			if err := r.UnmarshalCF(data[n : n+int(l)]); err != nil {
				p.t.Fatal(err)
			}
			data = data[n+int(l):]
			if l == 0 { // the server's ping: an empty reply
				p.pings++
				p.send([]byte{0})
				continue
			}
			p.queued = append(p.queued, r)
		}
	}
}

// closed is the close the connection ends with.
func (p *pbConn) closed() error {
	p.t.Helper()
	return readUntilClose(p.ws)
}

func (p *pbConn) connect(tok string, more ...*cfp.Command) {
	p.t.Helper()
	p.send(pbFrame(p.t, append([]*cfp.Command{{Id: 1, Connect: &cfp.ConnectRequest{Token: tok, Name: "raw"}}}, more...)...))
	if r := p.read(); r.Id != 1 || r.Connect == nil || r.Connect.Client == "" || !r.Connect.Pong {
		p.t.Fatalf("connect reply %+v", r)
	}
}

// The Protobuf format with a raw WebSocket: the subprotocol is chosen,
// commands in the connect frame run after it, replies are binary and
// length-delimited, the server pings with an empty reply and an empty
// command answers it; and every malformed frame (a truncated or
// overflowing varint, a length beyond the frame, bytes that are no
// command, a text frame) ends the connection with 3501, Centrifugo's bad
// request, after the commands before it ran.
func TestCentrifugoProtobufFrames(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(cfg *edge.Config) {
		cfg.PingInterval = time.Second
		cfg.ReadTimeout = 3 * time.Second
		cfg.MaxFrameBytes = 4096
	})
	tok := token(t, "dave", time.Hour, auth.Grants{Subscribe: []string{"*"}, Publish: []string{"*"}})

	p := dialProtobuf(t, e)
	p.connect(tok, &cfp.Command{Id: 2, Subscribe: &cfp.SubscribeRequest{Channel: "room"}})
	if r := p.read(); r.Id != 2 || r.Subscribe == nil || !r.Subscribe.Recoverable || r.Subscribe.Epoch == "" {
		t.Fatalf("subscribe reply %+v", r)
	}
	// A publish's data is JSON to Parley's clients: other bytes are 107.
	p.send(pbFrame(t, &cfp.Command{Id: 3, Publish: &cfp.PublishRequest{Channel: "room", Data: []byte{0xff, 0}}}))
	if r := p.read(); r.Id != 3 || r.Error == nil || r.Error.Code != 107 {
		t.Fatalf("publish of non-JSON data: %+v", r)
	}
	p.send(pbFrame(t, &cfp.Command{Id: 4, Publish: &cfp.PublishRequest{Channel: "room", Data: []byte(`{"n":1}`)}}))
	var pushed, acked bool
	for !pushed || !acked {
		switch r := p.read(); {
		case r.Id == 4 && r.Publish != nil:
			acked = true
		case r.Push != nil && r.Push.Pub != nil:
			if r.Push.Channel != "room" || string(r.Push.Pub.Data) != `{"n":1}` || r.Push.Pub.Info.GetUser() != "dave" || r.Push.Pub.Offset == 0 {
				t.Fatalf("publication push %+v", r.Push)
			}
			pushed = true
		default:
			t.Fatalf("unexpected reply %+v", r)
		}
	}
	// Past the read timeout, kept alive by answered pings alone.
	deadline := time.Now().Add(edgetest.Wait)
	for p.pings < 4 && time.Now().Before(deadline) {
		p.send(pbFrame(t, &cfp.Command{Id: 5, Ping: &cfp.PingRequest{}}))
		if r := p.read(); r.Id != 5 || r.Ping == nil {
			t.Fatalf("ping reply %+v", r)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if p.pings < 4 {
		t.Fatalf("%d server pings", p.pings)
	}

	huge := binary.AppendUvarint(nil, 1<<62)
	for _, c := range []struct {
		name  string
		frame []byte
		// before is a valid command ahead of the malformed bytes: it must
		// be answered before the close.
		before bool
	}{
		{"truncated varint", []byte{0x80}, false},
		{"truncated varint after a command", []byte{0x80, 0x80}, true},
		{"length beyond the frame", []byte{5, 0x08, 0x01}, false},
		{"length of 2^62", append(huge, 0x08, 0x01), false},
		{"varint past 64 bits", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, false},
		{"not a command", []byte{3, 0x0a, 0x7f, 0x00}, true},
		// Discarded unread by the frame reader: its lengths are never looked at.
		{"frame above --max-frame-bytes", append(binary.AppendUvarint(nil, 5000), make([]byte, 5000)...), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := dialProtobuf(t, e)
			p.connect(tok)
			frame := c.frame
			if c.before {
				frame = append(pbFrame(t, &cfp.Command{Id: 9, Ping: &cfp.PingRequest{}}), frame...)
			}
			p.send(frame)
			if c.before {
				if r := p.read(); r.Id != 9 || r.Ping == nil {
					t.Fatalf("reply to the command before: %+v", r)
				}
			}
			if err := p.closed(); !websocket.IsCloseError(err, 3501) {
				t.Fatalf("%v, want close 3501", err)
			}
		})
	}
	t.Run("malformed connect frame", func(t *testing.T) {
		p := dialProtobuf(t, e)
		p.send([]byte{9, 0x08})
		if err := p.closed(); !websocket.IsCloseError(err, 3501) {
			t.Fatalf("%v, want close 3501", err)
		}
	})
	t.Run("text frame", func(t *testing.T) {
		p := dialProtobuf(t, e)
		p.connect(tok)
		if err := p.ws.WriteMessage(websocket.TextMessage, []byte(`{"id":2,"ping":{}}`)); err != nil {
			t.Fatal(err)
		}
		if err := p.closed(); !websocket.IsCloseError(err, 3501) {
			t.Fatalf("%v, want close 3501", err)
		}
	})
	t.Run("format query parameter", func(t *testing.T) {
		// Centrifugo's ?format=protobuf asks for the format without a
		// subprotocol: none is named in the answer.
		ws, _, err := websocket.DefaultDialer.Dial(centrifugoURL(e)+"?format=protobuf", nil)
		if err != nil {
			t.Fatal(err)
		}
		p := &pbConn{t: t, ws: ws}
		t.Cleanup(func() { ws.Close() })
		if ws.Subprotocol() != "" {
			t.Fatalf("subprotocol %q chosen, none was offered", ws.Subprotocol())
		}
		p.connect(tok)
	})
}

// The Parley endpoint stays text-only: a binary frame is refused with an
// error and the connection goes on, in text.
func TestParleyEndpointRefusesBinaryFrames(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	r := dialRaw(t, e, "alice")
	for _, m := range []struct {
		typ  int
		data string
		want string
	}{
		{websocket.BinaryMessage, `{"id":1,"op":"ping"}`, "binary frames are not supported"},
		{websocket.TextMessage, `{"id":2,"op":"ping"}`, `"id":2`},
	} {
		if err := r.ws.WriteMessage(m.typ, []byte(m.data)); err != nil {
			t.Fatal(err)
		}
		_ = r.ws.SetReadDeadline(time.Now().Add(edgetest.Wait))
		typ, data, err := r.ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if typ != websocket.TextMessage || !strings.Contains(string(data), m.want) {
			t.Fatalf("after %s: message type %d %s, want text with %s", m.data, typ, data, m.want)
		}
	}
}

// A token expired at connect: the 109 reply in Protobuf, then 3005.
func TestCentrifugoProtobufExpiredToken(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	p := dialProtobuf(t, e)
	p.send(pbFrame(t, &cfp.Command{Id: 1, Connect: &cfp.ConnectRequest{Token: token(t, "x", -time.Minute, auth.Grants{})}}))
	if r := p.read(); r.Id != 1 || r.Error == nil || r.Error.Code != 109 {
		t.Fatalf("reply %+v, want error 109", r)
	}
	if err := p.closed(); !websocket.IsCloseError(err, 3005) {
		t.Fatalf("%v, want close 3005", err)
	}
}
