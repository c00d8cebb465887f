package protocol

import (
	"encoding/json"
	"strconv"
)

// MarshalReply encodes r as json.Marshal does (the same keys in the same
// order, the same fields omitted), without reflection: every request is
// answered with one, and a connect storm's sub replies were a twentieth of
// its CPU through encoding/json. Strings are escaped by AppendString (no
// HTML escaping of <, > and &: the same JSON values). A reply carrying
// messages (history) goes through encoding/json, which also checks and
// compacts them.
func MarshalReply(r *Reply) ([]byte, error) {
	if r.Msgs != nil {
		return json.Marshal(r)
	}
	b := make([]byte, 0, 64+len(r.Room)+len(r.Reason))
	b = append(b, '{')
	first := true
	key := func(b []byte, k string) []byte {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, k...)
		return append(b, '"', ':')
	}
	if r.ID != 0 {
		b = strconv.AppendInt(key(b, "id"), r.ID, 10)
	}
	if r.OK {
		b = append(key(b, "ok"), "true"...)
	}
	if r.Room != "" {
		b = AppendString(key(b, "room"), r.Room)
	}
	if r.Seq != nil {
		b = strconv.AppendUint(key(b, "seq"), *r.Seq, 10)
	}
	if r.Dup != nil {
		b = strconv.AppendBool(key(b, "dup"), *r.Dup)
	}
	if r.Recovered != nil {
		b = strconv.AppendBool(key(b, "recovered"), *r.Recovered)
	}
	if r.Reason != "" {
		b = AppendString(key(b, "reason"), r.Reason)
	}
	if r.Users != nil {
		b = append(key(b, "users"), '[')
		for i, u := range r.Users {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendString(b, u)
		}
		b = append(b, ']')
	}
	if r.Expires != 0 {
		b = strconv.AppendInt(key(b, "expires"), r.Expires, 10)
	}
	if r.Error != nil {
		b = append(key(b, "error"), `{"code":`...)
		b = AppendString(b, string(r.Error.Code))
		b = append(b, `,"message":`...)
		b = AppendString(b, r.Error.Message)
		b = append(b, '}')
	}
	return append(b, '}'), nil
}
