// Package protocol is Parley's WebSocket protocol v1: the requests clients
// send, the replies and pushes the edge sends back, the error and close codes,
// and the validation of every name before it becomes a NATS subject token.
//
// docs/protocol.md is the normative description; this package is its code.
package protocol

import (
	"encoding/json"
	"errors"
)

// Ops a client may send.
const (
	OpSub      = "sub"
	OpUnsub    = "unsub"
	OpPub      = "pub"
	OpHistory  = "history"
	OpPresence = "presence"
	OpPing     = "ping"
	// OpRefresh replaces the connection's token (same user) without
	// reconnecting: new grants and expiry take effect at once.
	OpRefresh = "refresh"
)

// Ops the edge pushes.
const (
	OpMsg   = "msg"
	OpJoin  = "join"
	OpLeave = "leave"
	// OpExpiring tells a client its token expires soon (Notice.Expires):
	// refresh now, or the connection closes with 4001 then.
	OpExpiring = "expiring"
	// OpUnsubscribed tells a client the edge ended one of its
	// subscriptions (a refreshed token no longer grants the room).
	OpUnsubscribed = "unsubscribed"
)

// Notice is a push about the connection itself rather than a room's
// message: expiring, unsubscribed.
type Notice struct {
	Op      string `json:"op"`
	Room    string `json:"room,omitempty"`    // unsubscribed: which room
	Expires int64  `json:"expires,omitempty"` // expiring: the token's exp, Unix ms
	Reason  string `json:"reason,omitempty"`
}

// Request is one JSON object a client sends. Pointer fields distinguish
// "absent" from zero where the protocol gives zero a meaning.
type Request struct {
	ID     int64           `json:"id,omitempty"`
	Op     string          `json:"op"`
	Room   string          `json:"room,omitempty"`
	To     string          `json:"to,omitempty"`
	Since  *uint64         `json:"since,omitempty"`
	Last   *int            `json:"last,omitempty"`
	MsgID  string          `json:"msg_id,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
	Before uint64          `json:"before,omitempty"`
	Limit  int             `json:"limit,omitempty"`
	Token  string          `json:"token,omitempty"` // refresh
	// Traceparent and Tracestate (pub, presence) are the W3C Trace Context
	// of the request: the edge's span continues that trace, and a pub's
	// message carries it through NATS (docs/tracing.md).
	Traceparent string `json:"traceparent,omitempty"`
	Tracestate  string `json:"tracestate,omitempty"`
}

// Reply answers one request. OK and Error are mutually exclusive.
type Reply struct {
	ID        int64             `json:"id,omitempty"`
	OK        bool              `json:"ok,omitempty"`
	Room      string            `json:"room,omitempty"`
	Seq       *uint64           `json:"seq,omitempty"`
	Dup       *bool             `json:"dup,omitempty"`
	Recovered *bool             `json:"recovered,omitempty"`
	Reason    string            `json:"reason,omitempty"`
	Msgs      []json.RawMessage `json:"msgs,omitzero"`
	Users     []string          `json:"users,omitzero"`
	Expires   int64             `json:"expires,omitempty"` // refresh: the new token's exp, Unix ms (0: none)
	Error     *Error            `json:"error,omitempty"`
}

// Error is the body of a failed reply.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// Code is a stable, documented error code.
type Code string

const (
	CodeBadRequest   Code = "bad_request"
	CodeUnauthorized Code = "unauthorized"
	CodeForbidden    Code = "forbidden"
	CodeNotFound     Code = "not_found"
	CodeTooLarge     Code = "too_large"
	CodeRateLimited  Code = "rate_limited"
	CodeUnavailable  Code = "unavailable"
	CodeInternal     Code = "internal"
)

// Sentinel errors, one per code, so handlers can return wrapped errors and
// the connection maps them with errors.Is.
var (
	ErrBadRequest   = errors.New(string(CodeBadRequest))
	ErrUnauthorized = errors.New(string(CodeUnauthorized))
	ErrForbidden    = errors.New(string(CodeForbidden))
	ErrNotFound     = errors.New(string(CodeNotFound))
	ErrTooLarge     = errors.New(string(CodeTooLarge))
	ErrRateLimited  = errors.New(string(CodeRateLimited))
	ErrUnavailable  = errors.New(string(CodeUnavailable))
	ErrInternal     = errors.New(string(CodeInternal))
)

var codeOf = []struct {
	err  error
	code Code
}{
	{ErrBadRequest, CodeBadRequest},
	{ErrUnauthorized, CodeUnauthorized},
	{ErrForbidden, CodeForbidden},
	{ErrNotFound, CodeNotFound},
	{ErrTooLarge, CodeTooLarge},
	{ErrRateLimited, CodeRateLimited},
	{ErrUnavailable, CodeUnavailable},
	{ErrInternal, CodeInternal},
}

// ErrorReply builds the reply for a failed request. An error that wraps none
// of the sentinels is an internal error: its text is not shown to the client.
func ErrorReply(id int64, err error) Reply {
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return Reply{ID: id, Error: &Error{Code: c.code, Message: err.Error()}}
		}
	}
	return Reply{ID: id, Error: &Error{Code: CodeInternal, Message: "internal error"}}
}

// Close codes the edge uses when it ends a WebSocket connection.
const (
	// CloseTokenExpired: the JWT's exp passed; reconnect with a fresh token.
	CloseTokenExpired = 4001
	// CloseSlowConsumer: the outbound queue overflowed; reconnect and resume with since.
	CloseSlowConsumer = 4002
	// CloseShuttingDown: the edge is draining; reconnect (to any edge) and resume.
	CloseShuttingDown = 4003
	// ClosePolicyViolation: abuse (request flood, repeated oversize frames).
	ClosePolicyViolation = 4004
	// CloseTooLarge is the standard code for a frame above the hard limit.
	CloseTooLarge = 1009
	// CloseTryAgainLater (the standard 1013): a long resume's replay could
	// not be finished (the stream stopped answering, or its retention
	// removed messages being replayed); reconnect and resume with since.
	CloseTryAgainLater = 1013
)

// Frame separator: a text frame carries one or more JSON objects separated by '\n'.
const Separator = '\n'
