package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// A driver is one target's client side: how a connection authenticates,
// subscribes to its room and receives the room's messages. Every driver
// runs on the same plumbing (wsConn): a raw gorilla/websocket connection
// with the same buffers, one reader goroutine, the payload parsed by the
// same code, so what the client costs is the same for every target and the
// servers are compared, not the clients.
type driver interface {
	// url is the URL to dial for user (credentials in the query, if the
	// target takes them there).
	url(base, user, token string) (string, error)
	// subscribe runs on the fresh connection: authenticate (if the target
	// does it in-band), subscribe to room, and return once the server
	// confirmed the subscription. Pushes that arrive meanwhile are handed
	// to onData.
	subscribe(c *wsConn, user, token, room string, onData func([]byte)) error
	// read handles one WebSocket message after subscribe: pushes go to
	// onData, server pings are answered.
	read(c *wsConn, msg []byte, onData func([]byte)) error
}

func newDriver(target string) (driver, error) {
	switch target {
	case TargetParley, "":
		return parleyDriver{}, nil
	case TargetCentrifugo:
		return centrifugoDriver{}, nil
	case TargetNATS:
		return &natsDriver{}, nil
	}
	return nil, fmt.Errorf("unknown target %q", target)
}

// Client-side buffers, the same for every target (and as the client
// package's connections in the other scenarios).
const (
	wsReadBuffer  = 4096
	wsWriteBuffer = 1024
)

// wsConn is one driven connection: the socket and per-driver state, read by
// its one reader goroutine.
type wsConn struct {
	ws *websocket.Conn
	// pending holds a partial protocol line across messages (nats).
	pending []byte
	done    chan struct{}
	err     error
	closeMu sync.Mutex
	closed  bool
}

// dialWS opens a WebSocket from source address src with the shared buffers.
func dialWS(ctx context.Context, url string, src net.IP) (*wsConn, error) {
	d := &websocket.Dialer{
		HandshakeTimeout: 30 * time.Second,
		ReadBufferSize:   wsReadBuffer, WriteBufferSize: wsWriteBuffer,
		NetDialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 30 * time.Second}).DialContext,
	}
	ws, resp, err := d.DialContext(ctx, url, nil)
	if err != nil {
		if resp != nil {
			return nil, httpStatusError(resp.StatusCode)
		}
		return nil, err
	}
	return &wsConn{ws: ws, done: make(chan struct{})}, nil
}

// httpStatusError is an upgrade refused with an HTTP status.
type httpStatusError int

func (e httpStatusError) Error() string { return "upgrade refused: HTTP " + strconv.Itoa(int(e)) }

// refusedError is a subscription or authentication the server refused.
type refusedError struct{ what, msg string }

func (e *refusedError) Error() string { return e.what + " refused: " + e.msg }

func (c *wsConn) write(typ int, b []byte) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.ws.WriteMessage(typ, b)
}

// next reads one message, with a deadline while subscribing.
func (c *wsConn) next(deadline time.Time) ([]byte, error) {
	_ = c.ws.SetReadDeadline(deadline)
	_, b, err := c.ws.ReadMessage()
	return b, err
}

// serve is the connection's reader goroutine: every message to the driver
// until the connection ends.
func (c *wsConn) serve(d driver, onData func([]byte)) {
	defer close(c.done)
	_ = c.ws.SetReadDeadline(time.Time{})
	for {
		_, b, err := c.ws.ReadMessage()
		if err == nil {
			err = d.read(c, b, onData)
		}
		if err != nil {
			c.closeMu.Lock()
			if !c.closed {
				c.err = err
			}
			c.closeMu.Unlock()
			_ = c.ws.Close()
			return
		}
	}
}

// close ends the connection (the reader then ends without an error).
func (c *wsConn) close() {
	c.closeMu.Lock()
	c.closed = true
	c.closeMu.Unlock()
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	_ = c.ws.Close()
}

// splitLines calls f for each non-blank '\n'-separated line of b (Parley's
// and Centrifugo's JSON frames both batch that way).
func splitLines(b []byte, f func([]byte) error) error {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if err := f(line); err != nil {
			return err
		}
	}
	return nil
}

// mintToken is an HS256 token for user: sub, a day's exp, and Parley grants
// of every room (Centrifugo ignores the parley claim).
func mintToken(secret, user string) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":    user,
		"exp":    time.Now().Add(24 * time.Hour).Unix(),
		"parley": map[string]any{"subscribe": []string{"*"}, "publish": []string{"*"}},
	}).SignedString([]byte(secret))
}

// The payload every driven publisher sends, whatever the target:
// {"t":<send time, Unix ns>,"s":<step>,"n":<the room's seq>,"p":"<padding>"}.
// Receivers find it by its opening `{"t":` inside whatever envelope the
// target wraps around it.
const payloadKey = `{"t":`

func stepPayload(step int, n uint64, pad string) []byte {
	b := make([]byte, 0, 64+len(pad))
	b = append(b, payloadKey...)
	b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
	b = append(b, `,"s":`...)
	b = strconv.AppendInt(b, int64(step), 10)
	b = append(b, `,"n":`...)
	b = strconv.AppendUint(b, n, 10)
	if pad != "" {
		b = append(b, `,"p":"`...)
		b = append(b, pad...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// parsePayload finds the payload in b (a push with its envelope) and
// returns its send time, step and seq.
func parsePayload(b []byte) (t int64, step int, n uint64, ok bool) {
	i := bytes.Index(b, []byte(payloadKey))
	if i < 0 {
		return 0, 0, 0, false
	}
	b = b[i+len(payloadKey):]
	num := func(key string) (uint64, bool) {
		if !bytes.HasPrefix(b, []byte(key)) {
			return 0, false
		}
		b = b[len(key):]
		var v uint64
		k := 0
		for k < len(b) && b[k] >= '0' && b[k] <= '9' {
			v = v*10 + uint64(b[k]-'0')
			k++
		}
		b = b[k:]
		return v, k > 0
	}
	tv, ok1 := num("")
	sv, ok2 := num(`,"s":`)
	nv, ok3 := num(`,"n":`)
	return int64(tv), int(sv), nv, ok1 && ok2 && ok3
}

// A publisher is a target's backend side: it publishes payloads to rooms
// as a backend service would, and reports each outcome to done (from any
// goroutine; err nil when the server took it).
type publisher interface {
	publish(room string, body []byte, done func(error))
	// flush waits (bounded by ctx) until every publish so far has had its
	// done call.
	flush(ctx context.Context) error
	close()
}

func newPublisher(ctx context.Context, s *Spec) (publisher, error) {
	switch s.Target {
	case TargetParley, "":
		return newParleyPublisher(s.NATS)
	case TargetCentrifugo:
		return newCentrifugoPublisher(s.CentrifugoAPI, s.CentrifugoAPIKey, s.Rooms), nil
	case TargetNATS:
		return newNATSPublisher(s.NATS)
	}
	return nil, fmt.Errorf("unknown target %q", s.Target)
}

// defaultURL is where each target listens in the benchmark setup.
func DefaultURL(target string) string {
	switch target {
	case TargetCentrifugo:
		return "ws://127.0.0.1:8000/connection/websocket"
	case TargetNATS:
		return "ws://127.0.0.1:8082"
	}
	return "ws://127.0.0.1:8080/ws"
}

// DefaultProcs are the process names (/proc comm) sampled for a target.
func DefaultProcs(target string) []string {
	switch target {
	case TargetCentrifugo:
		return []string{"centrifugo"}
	case TargetNATS:
		return []string{"nats-server"}
	}
	return []string{"edge", "nats-server"}
}

// classifyDriven names a driven connection's error.
func classifyDriven(err error) string {
	var hs httpStatusError
	var re *refusedError
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &hs):
		return fmt.Sprintf("http_%d", int(hs))
	case errors.As(err, &re):
		return re.what + "_refused"
	case errors.As(err, &ce):
		return fmt.Sprintf("close_%d", ce.Code)
	case errors.Is(err, websocket.ErrBadHandshake):
		return "bad_handshake"
	}
	return classify(err)
}
