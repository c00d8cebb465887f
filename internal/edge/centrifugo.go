package edge

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	cfp "github.com/centrifugal/protocol"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/protocol"
)

// The edge's second client protocol: Centrifugo's client protocol v2 in its
// JSON and Protobuf formats at /connection/websocket, so Centrifugo's SDKs
// connect unmodified (docs/centrifugo.md has the mapping). A Centrifugo
// connection is a *Conn like any other, with cf set: the same rooms,
// resumes, long replays, publishes, presence, limits and close handling.
// Only the edges differ: authentication comes in the first command instead
// of at the upgrade (here), requests, replies and pushes are translated
// (centrifugo_commands.go), and Protobuf frames are split and framed
// (centrifugo_protobuf.go, writeBatch).

// Centrifugo's client error codes (replies) and disconnect codes (close
// frames), as its documentation lists them. Disconnect codes 3000-3499
// make its SDKs reconnect, 3500-3999 make them stop.
const (
	cfErrInternal      = 100
	cfErrUnauthorized  = 101
	cfErrUnknownChan   = 102
	cfErrPermission    = 103
	cfErrMethod        = 104
	cfErrAlreadySub    = 105
	cfErrLimit         = 106
	cfErrBadRequest    = 107
	cfErrNotAvailable  = 108
	cfErrTokenExpired  = 109
	cfErrTooMany       = 111
	cfErrUnrecoverable = 112

	cfDisconnectShutdown     = 3001
	cfDisconnectServerError  = 3004
	cfDisconnectExpired      = 3005
	cfDisconnectSlow         = 3008
	cfDisconnectNoPong       = 3012
	cfDisconnectTooMany      = 3013
	cfDisconnectInvalidToken = 3500
	cfDisconnectBadRequest   = 3501
	cfDisconnectConnLimit    = 3504
	cfDisconnectNotAvailable = 3508

	// cfUnsubscribeServer is the unsubscribe push's "server unsubscribed
	// you, do not resubscribe" code.
	cfUnsubscribeServer = 2000
)

// cfConnectTimeout bounds the time from the upgrade to the connect command:
// until then the connection is nobody's and counts against no user's limit.
const cfConnectTimeout = 10 * time.Second

// Centrifugo's server ping is an empty reply: "{}" in JSON, zero bytes in
// Protobuf (a length prefix of 0 on the wire). The Protobuf one must be
// non-nil: deliver drops a nil frame.
var (
	cfPingJSON     = []byte("{}")
	cfPingProtobuf = []byte{}
)

// cfState is what a Centrifugo connection has beyond a Conn's.
type cfState struct {
	client string // the client id told in the connect reply
	// protobuf says the connection speaks Centrifugo's Protobuf format:
	// binary frames of varint-length-delimited commands and replies
	// (centrifugo_protobuf.go). Fixed at the upgrade.
	protobuf bool
	// rest holds commands that came in the connect command's frame, run
	// once the connection is served.
	rest []byte
	// personal is the subscription to the user's own channel "#user" (the
	// user's direct messages), if any; owned by the request handler.
	personal *room

	mu sync.Mutex
	// joinLeave lists the channels whose subscribe asked for join and
	// leave pushes (Centrifugo sends them only then); deliver reads it
	// from other goroutines, hence mu.
	joinLeave map[string]bool
}

// encode is r in the connection's format: one frame for the outbox, which
// the writer frames (JSON: '\n'-separated; Protobuf: length-prefixed).
func (s *cfState) encode(r *cfp.Reply) ([]byte, error) { return cfEncode(s.protobuf, r) }

// ping is the connection's server ping.
func (s *cfState) ping() []byte {
	if s.protobuf {
		return cfPingProtobuf
	}
	return cfPingJSON
}

func (s *cfState) wantsJoinLeave(channel string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.joinLeave[channel]
}

func (s *cfState) setJoinLeave(channel string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		s.joinLeave[channel] = true
	} else {
		delete(s.joinLeave, channel)
	}
}

// cfProtobufSubprotocol is the WebSocket subprotocol with which
// centrifuge-go, centrifuge-js's protobuf build and the mobile SDKs ask for
// the Protobuf format.
const cfProtobufSubprotocol = "centrifuge-protobuf"

// cfWantsProtobuf reports whether the client asks for Centrifugo's Protobuf
// format: the centrifuge-protobuf subprotocol, or Centrifugo's query
// parameter ?format=protobuf (or ?cf_protocol=protobuf, which this endpoint
// has always taken as asking for Protobuf). offered says the subprotocol was offered: the upgrade must
// then name it in its answer (RFC 6455 §4.2.2), and only then.
func cfWantsProtobuf(r *http.Request) (protobuf, offered bool) {
	for _, p := range websocket.Subprotocols(r) {
		if p == cfProtobufSubprotocol {
			return true, true
		}
	}
	q := r.URL.Query()
	return q.Get("cf_protocol") == "protobuf" || q.Get("format") == "protobuf", false
}

// serveCentrifugo is /connection/websocket: the same admission as /ws
// (drain, origin, edge and per-user and per-address limits), but the token
// comes in the connect command after the upgrade, as Centrifugo's SDKs send
// it.
func (e *Edge) serveCentrifugo(w http.ResponseWriter, r *http.Request) {
	if !e.mayUpgrade(w, r) {
		return
	}
	protobuf, offered := cfWantsProtobuf(r)
	var header http.Header
	if offered {
		// The shared upgrader has no Subprotocols (/ws takes none): the
		// answer's header names the chosen one instead.
		header = http.Header{"Sec-Websocket-Protocol": {cfProtobufSubprotocol}}
	}
	addr := clientAddr(r, e.cfg.TrustedProxies)
	// A token may also come the Parley way (a proxy adding the header); the
	// connect command's wins. ?user= is insecure mode's dev identity.
	urlToken, devUser := auth.TokenFromRequest(r), r.URL.Query().Get("user")
	ws, err := e.upgrader.Upgrade(w, r, header)
	if err != nil {
		e.metrics.ConnectsTotal.WithLabelValues("refused").Inc()
		return
	}
	e.connectCentrifugo(ws, protobuf, addr, urlToken, devUser)
}

// connectCentrifugo reads and answers the connect command on the upgrading
// goroutine, then hands the connection to its own (runConn).
func (e *Edge) connectCentrifugo(ws *websocket.Conn, protobuf bool, addr netip.Addr, urlToken, devUser string) {
	cfg := &e.cfg
	refuse := func(result string, code int, reason string, reply []byte) {
		e.metrics.ConnectsTotal.WithLabelValues(result).Inc()
		deadline := time.Now().Add(cfg.WriteTimeout)
		if reply != nil {
			_ = ws.SetWriteDeadline(deadline)
			if protobuf { // one reply, framed as the writer frames them
				reply = append(binary.AppendUvarint(nil, uint64(len(reply))), reply...)
			}
			_ = ws.WriteMessage(cfMessageType(protobuf), reply)
		}
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), deadline)
		_ = ws.Close()
	}
	fr := newFrameReader(ws.NetConn(), min(cfg.ReadTimeout, cfConnectTimeout), cfg.MessageTimeout, func(payload []byte) error {
		return ws.WriteControl(websocket.PongMessage, payload, time.Now().Add(cfg.WriteTimeout))
	})
	fr.deadline()
	var m message
	for {
		var err error
		if m, err = fr.next(cfg.MaxFrameBytes, cfg.HardFrameLimit); err != nil {
			fr.release()
			refuse("refused", cfDisconnectBadRequest, "no connect command", nil)
			return
		}
		if !m.control {
			break
		}
	}
	var cmd *cfp.Command
	var rest []byte
	switch {
	case m.tooLarge || m.text == protobuf: // the other format's frame type
	case protobuf:
		var first []byte
		var err error
		if first, rest, err = cfNextProtobuf(m.data); err == nil {
			cmd = &cfp.Command{}
			if cmd.UnmarshalCF(first) != nil {
				cmd = nil
			}
			rest = bytes.Clone(rest)
		}
	default:
		first := m.data
		if i := bytes.IndexByte(first, '\n'); i >= 0 {
			first, rest = first[:i], bytes.Clone(bytes.TrimSpace(first[i+1:]))
		}
		cmd, _ = cfp.NewJSONCommandDecoder(first).Decode() // io.EOF with the command: the only one
	}
	if len(rest) == 0 {
		rest = nil // serve runs rest only if there is some
	}
	if cmd == nil || cmd.Connect == nil || cmd.Id == 0 {
		fr.release()
		refuse("refused", cfDisconnectBadRequest, "bad request: the first command must be connect", nil)
		return
	}
	token := cmd.Connect.Token
	if token == "" {
		token = urlToken
	}
	ident, err := e.identify(token, devUser)
	if err != nil {
		fr.release()
		if errors.Is(err, jwt.ErrTokenExpired) {
			// The SDKs answer 109 by fetching a fresh token and connecting
			// again (the close code tells them to reconnect).
			reply, _ := cfEncode(protobuf, &cfp.Reply{Id: cmd.Id, Error: &cfp.Error{Code: cfErrTokenExpired, Message: "token expired"}})
			refuse("unauthorized", cfDisconnectExpired, "token expired", reply)
			return
		}
		refuse("unauthorized", cfDisconnectInvalidToken, "invalid token", nil)
		return
	}
	lease, why := e.admit.acquire(cfg, ident.User, limitKey(addr))
	if why != admitted {
		fr.release()
		refuse("user_limit", cfDisconnectConnLimit, "connection limit", nil)
		return
	}
	c := newConn(e, e.nextConn.Add(1), nil, ident)
	c.cf = &cfState{client: cfg.Presence.EdgeID + "-" + strconv.FormatUint(c.id, 10), protobuf: protobuf, rest: rest, joinLeave: make(map[string]bool)}
	if protobuf {
		c.wsType = websocket.BinaryMessage
	}
	c.fr = fr
	res := &cfp.ConnectResult{
		Client:  c.cf.client,
		Version: "parley",
		// The SDKs wait for a server ping this often (plus their own
		// margin) and answer each with a pong.
		Ping: uint32(max(cfg.PingInterval/time.Second, 1)),
		Pong: true,
		Node: cfg.Presence.EdgeID,
	}
	if !ident.Expires.IsZero() {
		// The SDKs refresh the token (a refresh command) before ttl runs out.
		res.Expires, res.Ttl = true, uint32(max(time.Until(ident.Expires)/time.Second, 1))
	}
	reply, err := c.cf.encode(&cfp.Reply{Id: cmd.Id, Connect: res})
	if err != nil { // unreachable: nothing in it is raw JSON
		e.admit.release(lease)
		fr.release()
		refuse("refused", cfDisconnectServerError, "internal error", nil)
		return
	}
	e.metrics.ConnectsTotal.WithLabelValues("ok").Inc()
	c.attach(ws)
	if !e.register(c, lease) {
		fr.release()
		return
	}
	c.deliver(reply)
	c.debug("connected", "protocol", "centrifugo", "remote", ws.RemoteAddr())
	go e.runConn(c, ident)
}

// wireCloseCode is the close code a connection's client is sent for the
// edge's code: Centrifugo's SDKs decide from it whether to reconnect, so
// each Parley code becomes the Centrifugo code that asks for the same.
func (c *Conn) wireCloseCode(code int) int {
	if c.cf == nil {
		return code
	}
	switch code {
	case protocol.CloseTokenExpired:
		return cfDisconnectExpired
	case protocol.CloseSlowConsumer:
		return cfDisconnectSlow
	case protocol.CloseShuttingDown:
		return cfDisconnectShutdown
	case protocol.ClosePolicyViolation:
		return cfDisconnectTooMany
	case protocol.CloseTryAgainLater, websocket.CloseInternalServerErr:
		return cfDisconnectServerError
	case protocol.CloseTooLarge, websocket.CloseUnsupportedData, websocket.CloseInvalidFramePayloadData, websocket.CloseProtocolError:
		return cfDisconnectBadRequest
	case websocket.CloseGoingAway: // the read timeout: no pong came
		return cfDisconnectNoPong
	}
	return code
}

// epochCache is the stream's identity for Centrifugo's epochs: derived from
// the stream's creation time, so a stream deleted and created again (its
// sequences start over) has a new epoch and resuming clients are told they
// did not recover, as Centrifugo clients expect of a reset.
type epochCache struct {
	mu    sync.Mutex
	epoch string
	at    time.Time
}

// epochMaxAge bounds how stale the cached epoch may be: a reset is noticed
// within it, and a burst of subscribes costs one stream info request.
const epochMaxAge = time.Second

func (ec *epochCache) get(ctx context.Context, b Backend) (string, error) {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	if ec.epoch != "" && time.Since(ec.at) < epochMaxAge {
		return ec.epoch, nil
	}
	st, err := b.StreamState(ctx)
	if err != nil {
		return "", err
	}
	ec.epoch = "s" + strconv.FormatInt(st.Created.UnixNano(), 36)
	ec.at = time.Now()
	return ec.epoch, nil
}

// cfError is a reply error with a Centrifugo code of its own (one that no
// Parley code maps to).
type cfError struct {
	code      uint32
	msg       string
	temporary bool
}

func (e *cfError) Error() string { return e.msg }

// cfErrorOf is err as Centrifugo's error: its own code, or the one that
// asks the SDK for the same as the Parley code (retry for temporary ones).
func cfErrorOf(err error) *cfp.Error {
	var ce *cfError
	if errors.As(err, &ce) {
		return &cfp.Error{Code: ce.code, Message: ce.msg, Temporary: ce.temporary}
	}
	pe := protocol.ErrorReply(0, err).Error
	return cfErrorFor(pe.Code, pe.Message)
}

func cfErrorFor(code protocol.Code, msg string) *cfp.Error {
	switch code {
	case protocol.CodeBadRequest, protocol.CodeTooLarge:
		return &cfp.Error{Code: cfErrBadRequest, Message: msg}
	case protocol.CodeUnauthorized:
		return &cfp.Error{Code: cfErrUnauthorized, Message: msg}
	case protocol.CodeForbidden:
		return &cfp.Error{Code: cfErrPermission, Message: msg}
	case protocol.CodeNotFound:
		return &cfp.Error{Code: cfErrUnknownChan, Message: msg}
	case protocol.CodeRateLimited:
		return &cfp.Error{Code: cfErrTooMany, Message: msg, Temporary: true}
	}
	// unavailable and internal: Centrifugo's temporary internal error,
	// which the SDKs retry (a subscribe resubscribes with backoff).
	return &cfp.Error{Code: cfErrInternal, Message: msg, Temporary: true}
}

// The encoders of replies and pushes; safe for concurrent use.
var (
	cfJSONEncoder     = cfp.NewJSONReplyEncoder()
	cfProtobufEncoder = cfp.NewProtobufReplyEncoder()
)

// cfEncode is r in JSON or Protobuf, unframed.
func cfEncode(protobuf bool, r *cfp.Reply) ([]byte, error) {
	var b []byte
	var err error
	if protobuf {
		b, err = cfProtobufEncoder.Encode(r)
	} else {
		b, err = cfJSONEncoder.Encode(r)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: encode a Centrifugo reply: %w", protocol.ErrInternal, err)
	}
	if b == nil {
		b = []byte{} // an empty reply (all zero) is still a frame: deliver drops nil
	}
	return b, nil
}

// cfMessageType is the WebSocket message type of a format's frames.
func cfMessageType(protobuf bool) int {
	if protobuf {
		return websocket.BinaryMessage
	}
	return websocket.TextMessage
}

// cfPersonalUser is the user a "#user" channel names, "" if channel is not
// one. Centrifugo's user-limited channels may list several users after the
// '#'; Parley's personal topic is one user's.
func cfPersonalUser(channel string) (string, bool) {
	user, ok := strings.CutPrefix(channel, "#")
	return user, ok
}
