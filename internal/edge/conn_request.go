package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/parley-mesh/parley/protocol"
)

func (c *Conn) handle(line []byte) {
	var req protocol.Request
	if err := protocol.DecodeRequest(line, &req); err != nil {
		c.replyErr(req.ID, fmt.Errorf("%w: malformed request: %s", protocol.ErrBadRequest, jsonProblem(err)))
		c.count("invalid", protocol.CodeBadRequest)
		return
	}
	if !c.reqLimit.Allow() {
		c.replyErr(req.ID, fmt.Errorf("%w: more than %g requests per second", protocol.ErrRateLimited, c.e.cfg.RequestRate))
		c.count(req.Op, protocol.CodeRateLimited)
		c.strike()
		return
	}
	if c.draining.Load() {
		c.replyErr(req.ID, fmt.Errorf("%w: edge is shutting down; reconnect to another edge", protocol.ErrUnavailable))
		return
	}
	if h := c.e.requestHook.Load(); h != nil {
		(*h)(req.Op)
	}
	var err error
	switch req.Op {
	case protocol.OpSub:
		err = c.subscribe(&req)
	case protocol.OpUnsub:
		err = c.unsubscribe(&req)
	case protocol.OpPub:
		err = c.publish(&req)
	case protocol.OpPing:
		c.reply(protocol.Reply{ID: req.ID, OK: true})
	case protocol.OpHistory:
		err = c.history(&req)
	case protocol.OpPresence:
		err = c.presence(&req)
	case protocol.OpRefresh:
		err = c.refresh(&req)
	case "":
		err = fmt.Errorf("%w: op is required", protocol.ErrBadRequest)
	default:
		err = fmt.Errorf("%w: unknown op %q", protocol.ErrBadRequest, truncateOp(req.Op))
	}
	if err != nil {
		c.replyErr(req.ID, err)
		c.count(req.Op, protocol.ErrorReply(0, err).Error.Code)
		return
	}
	if req.Op != protocol.OpPub { // a pub is counted when its ack arrives
		c.count(req.Op, "ok")
	}
}

func (c *Conn) count(op string, result protocol.Code) {
	switch op {
	case protocol.OpSub, protocol.OpUnsub, protocol.OpPub, protocol.OpPing, protocol.OpHistory, protocol.OpPresence, protocol.OpRefresh:
	default:
		op = "invalid" // never let clients mint label values
	}
	c.e.metrics.Requests.WithLabelValues(op, string(result)).Inc()
}

func truncateOp(op string) string {
	if len(op) > 32 {
		return op[:32] + "…"
	}
	return op
}

// jsonProblem keeps decoder errors short and free of the client's bytes.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("invalid JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return "a request must be a JSON object"
		}
		return fmt.Sprintf("field %q must be %s", typ.Field, jsonKind(typ.Type))
	}
	return "not a JSON object"
}

// jsonKind names a Go type the way the protocol document does.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct, reflect.Map:
		return "a JSON object"
	case reflect.Slice, reflect.Array:
		return "a JSON array"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "a " + t.Kind().String()
}

func (c *Conn) reply(r protocol.Reply) {
	if c.cf != nil {
		c.cfReplyParley(r)
		return
	}
	b, err := protocol.MarshalReply(&r)
	if err != nil {
		c.logger().Error("encode reply", "err", err)
		return
	}
	c.deliver(b)
}

func (c *Conn) replyErr(id int64, err error) {
	if errors.Is(err, protocol.ErrInternal) || protocol.ErrorReply(0, err).Error.Code == protocol.CodeInternal {
		c.logger().Error("request failed", "err", err)
	}
	c.reply(protocol.ErrorReply(id, err))
}
