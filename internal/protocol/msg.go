package protocol

import (
	"bytes"
	"encoding/json"
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
		dst = appendCompact(dst, m.Data)
	}
	return append(dst, '}')
}

// appendCompact appends JSON without insignificant whitespace: a '\n' inside
// a pushed object would break the newline-separated framing.
func appendCompact(dst, raw []byte) []byte {
	if bytes.IndexByte(raw, '\n') < 0 && bytes.IndexByte(raw, '\r') < 0 {
		return append(dst, raw...)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return AppendString(dst, string(raw))
	}
	return append(dst, buf.Bytes()...)
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
