package protocol

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Msg is a chat message as clients see it: the "msg" push, and an element of
// a history reply. A room message has Room, a direct message To, a broadcast
// neither.
type Msg struct {
	Op    string          `json:"op"`
	Room  string          `json:"room,omitempty"`
	To    string          `json:"to,omitempty"`
	Seq   uint64          `json:"seq"`
	MsgID string          `json:"msg_id,omitempty"`
	From  string          `json:"from,omitempty"`
	TS    int64           `json:"ts"`
	Data  json.RawMessage `json:"data"`
}

// Envelope is a message's payload on NATS (chat.room.*, chat.dm.*,
// chat.broadcast). Backend services publish it with any NATS client; the
// dedup id travels in the Nats-Msg-Id header, not here.
type Envelope struct {
	From  string          `json:"from,omitempty"`
	MsgID string          `json:"msg_id,omitempty"`
	Data  json.RawMessage `json:"data"`
}

// DecodeEnvelope reads a NATS payload. A payload that is not an envelope
// (plain text from `nats pub`, a bare JSON value) is still delivered: valid
// JSON becomes data as it is, anything else becomes a JSON string, so a
// backend service trying things out is never silently dropped.
func DecodeEnvelope(payload []byte) Envelope {
	var env Envelope
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) > 0 && trimmed[0] == '{' && json.Unmarshal(trimmed, &env) == nil && env.Data != nil {
		return env
	}
	if json.Valid(trimmed) {
		return Envelope{Data: json.RawMessage(trimmed)}
	}
	return Envelope{Data: AppendString(nil, string(payload))}
}

// AppendMsg appends m encoded as JSON. It is the hot path of fan-out (once
// per message per room, not per connection), so it is written by hand; the
// output is the same as json.Marshal's apart from HTML escaping.
func AppendMsg(dst []byte, m *Msg) []byte {
	dst = append(dst, `{"op":`...)
	dst = AppendString(dst, m.Op)
	if m.Room != "" {
		dst = append(dst, `,"room":`...)
		dst = AppendString(dst, m.Room)
	}
	if m.To != "" {
		dst = append(dst, `,"to":`...)
		dst = AppendString(dst, m.To)
	}
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, m.Seq, 10)
	if m.MsgID != "" {
		dst = append(dst, `,"msg_id":`...)
		dst = AppendString(dst, m.MsgID)
	}
	if m.From != "" {
		dst = append(dst, `,"from":`...)
		dst = AppendString(dst, m.From)
	}
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, m.TS, 10)
	dst = append(dst, `,"data":`...)
	if len(m.Data) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = appendData(dst, m.Data)
	}
	return append(dst, '}')
}

// appendData appends a message's data, which must be valid JSON (as
// DecodeEnvelope and encoding/json's RawMessage guarantee), in a form safe to
// push: one line, valid UTF-8, no raw U+2028/U+2029. A backend's payload can
// hold any bytes, and encoding/json accepts invalid UTF-8 inside strings, but
// browsers fail the whole WebSocket connection on a text frame that is not
// UTF-8. The common case (already safe) is checked without allocating and
// copied as it is.
func appendData(dst, raw []byte) []byte {
	if pushSafe(raw) {
		return append(dst, raw...)
	}
	if !json.Valid(raw) {
		// Not reachable through DecodeEnvelope; still never push broken JSON.
		return AppendString(dst, string(raw))
	}
	return appendSafeJSON(dst, raw)
}

// PushData is raw as a push carries it (see appendData). The archive stores
// this form: history read from it is what the live push was, and a store
// that refuses invalid UTF-8 (PostgreSQL's text and json types) takes it.
func PushData(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || pushSafe(raw) {
		return raw
	}
	return appendData(nil, raw)
}

// pushSafe reports whether valid JSON raw can be pushed as it is. A '\n' or
// '\r' in valid JSON can only be whitespace between tokens, but it would
// break the newline-separated framing.
func pushSafe(raw []byte) bool {
	if bytes.IndexByte(raw, '\n') >= 0 || bytes.IndexByte(raw, '\r') >= 0 || !utf8.Valid(raw) {
		return false
	}
	// U+2028 and U+2029 are E2 80 A8 and E2 80 A9.
	for i := 0; ; {
		j := bytes.IndexByte(raw[i:], 0xE2)
		if j < 0 {
			return true
		}
		i += j + 1
		if i+1 < len(raw) && raw[i] == 0x80 && (raw[i+1] == 0xA8 || raw[i+1] == 0xA9) {
			return false
		}
	}
}

// appendSafeJSON appends valid JSON raw without whitespace between tokens,
// with each byte of an invalid UTF-8 sequence inside a string replaced by
// \ufffd (as encoding/json does when it decodes such a string, so the value
// reads the same) and U+2028/U+2029 escaped. In valid JSON, bytes of 0x80 and
// above can only sit inside strings.
func appendSafeJSON(dst, raw []byte) []byte {
	dst = slices.Grow(dst, len(raw))
	inString := false
	start := 0 // raw[start:i] is still to be copied
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case !inString && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			dst = append(dst, raw[start:i]...)
			i++
			start = i
		case c == '"':
			inString = !inString
			i++
		case c == '\\' && inString:
			i += 2 // the escaped byte is ASCII; \u's hex digits are copied as they come
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(raw[i:])
			switch {
			case r == utf8.RuneError && size == 1:
				dst = append(dst, raw[start:i]...)
				dst = append(dst, `\ufffd`...)
				start = i + size
			case r == '\u2028' || r == '\u2029':
				dst = append(dst, raw[start:i]...)
				dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
				start = i + size
			}
			i += size
		}
	}
	return append(dst, raw[start:]...)
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript line handling.
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// SplitFrame calls fn with each non-blank line of a frame.
func SplitFrame(frame []byte, fn func(line []byte)) {
	for len(frame) > 0 {
		i := bytes.IndexByte(frame, Separator)
		var line []byte
		if i < 0 {
			line, frame = frame, nil
		} else {
			line, frame = frame[:i], frame[i+1:]
		}
		if len(bytes.TrimSpace(line)) > 0 {
			fn(line)
		}
	}
}
