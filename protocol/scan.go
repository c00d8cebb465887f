package protocol

import (
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// Scanner reads the flat JSON objects of the protocol without reflection.
// It handles the common shape (strings without escapes, integers, raw
// values) and reports anything else so the caller falls back to
// encoding/json, which stays the reference for every edge case.
type Scanner struct {
	B []byte
	I int
}

// WS skips whitespace.
func (s *Scanner) WS() {
	for s.I < len(s.B) && (s.B[s.I] == ' ' || s.B[s.I] == '\t' || s.B[s.I] == '\r' || s.B[s.I] == '\n') {
		s.I++
	}
}

// Eat consumes c if it is next.
func (s *Scanner) Eat(c byte) bool {
	if s.I < len(s.B) && s.B[s.I] == c {
		s.I++
		return true
	}
	return false
}

// Str reads a string without escapes and returns its contents (a slice of
// the input).
func (s *Scanner) Str() ([]byte, bool) {
	if !s.Eat('"') {
		return nil, false
	}
	start := s.I
	for s.I < len(s.B) {
		c := s.B[s.I]
		switch {
		case c == '"':
			v := s.B[start:s.I]
			s.I++
			return v, utf8.Valid(v)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		s.I++
	}
	return nil, false
}

// Uint reads a non-negative integer. It takes only what JSON calls an
// integer: no leading zeros (JSON forbids them, and encoding/json refuses
// them), and no fraction or exponent, which encoding/json refuses for an
// integer field.
func (s *Scanner) Uint() (uint64, bool) {
	start := s.I
	for s.I < len(s.B) && s.B[s.I] >= '0' && s.B[s.I] <= '9' {
		s.I++
	}
	n := s.I - start
	if n == 0 || n > 20 || (n > 1 && s.B[start] == '0') {
		return 0, false
	}
	if s.I < len(s.B) && (s.B[s.I] == '.' || s.B[s.I] == 'e' || s.B[s.I] == 'E') {
		return 0, false
	}
	var v uint64
	for _, c := range s.B[start:s.I] {
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false // overflows uint64
		}
		v = v*10 + d
	}
	return v, true
}

// Int reads an integer.
func (s *Scanner) Int() (int64, bool) {
	neg := s.Eat('-')
	u, ok := s.Uint()
	if !ok || u > 1<<63 || (!neg && u == 1<<63) {
		return 0, false
	}
	if neg {
		return -int64(u), true
	}
	return int64(u), true
}

// Skip passes over one JSON value of any kind. It checks the value against
// JSON's grammar exactly as encoding/json does (which does not check UTF-8
// inside strings), so what it passes over is valid JSON and a caller can keep
// it raw without validating it again; what follows the value (",", "}" or
// the end) is the caller's to check. Values nested deeper than maxDepth are
// declined: encoding/json reads them.
func (s *Scanner) Skip() bool { return s.skip(0) }

// maxDepth bounds Skip's recursion; protocol values are shallow.
const maxDepth = 64

func (s *Scanner) skip(depth int) bool {
	if depth > maxDepth || s.I >= len(s.B) {
		return false
	}
	switch c := s.B[s.I]; c {
	case '"':
		return s.skipString()
	case '{', '[':
		s.I++
		s.WS()
		end := byte(']')
		if c == '{' {
			end = '}'
		}
		if s.Eat(end) {
			return true
		}
		for {
			if c == '{' {
				if s.I >= len(s.B) || s.B[s.I] != '"' || !s.skipString() {
					return false
				}
				s.WS()
				if !s.Eat(':') {
					return false
				}
				s.WS()
			}
			if !s.skip(depth + 1) {
				return false
			}
			s.WS()
			if s.Eat(end) {
				return true
			}
			if !s.Eat(',') {
				return false
			}
			s.WS()
		}
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	default:
		return s.skipNumber()
	}
}

// skipString passes over a string, s.I at its opening quote.
func (s *Scanner) skipString() bool {
	s.I++
	for s.I < len(s.B) {
		c := s.B[s.I]
		switch {
		case c == '"':
			s.I++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			if s.I+1 >= len(s.B) {
				return false
			}
			switch s.B[s.I+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.I += 2
			case 'u':
				if s.I+6 > len(s.B) {
					return false
				}
				for _, h := range s.B[s.I+2 : s.I+6] {
					if !isHex(h) {
						return false
					}
				}
				s.I += 6
			default:
				return false
			}
			continue
		}
		s.I++
	}
	return false
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// skipNumber passes over -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *Scanner) skipNumber() bool {
	s.Eat('-')
	switch {
	case s.Eat('0'):
	case s.I < len(s.B) && s.B[s.I] >= '1' && s.B[s.I] <= '9':
		s.digits()
	default:
		return false
	}
	if s.Eat('.') && !s.digits() {
		return false
	}
	if s.Eat('e') || s.Eat('E') {
		if !s.Eat('+') {
			s.Eat('-')
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

// digits passes over [0-9]+.
func (s *Scanner) digits() bool {
	start := s.I
	for s.I < len(s.B) && s.B[s.I] >= '0' && s.B[s.I] <= '9' {
		s.I++
	}
	return s.I > start
}

func (s *Scanner) literal(lit string) bool {
	if len(s.B)-s.I < len(lit) || string(s.B[s.I:s.I+len(lit)]) != lit {
		return false
	}
	s.I += len(lit)
	return true
}

// Fields calls fn for each key of a flat object, positioned at its value;
// fn consumes the value and returns false to give up.
func (s *Scanner) Fields(fn func(key []byte) bool) bool {
	s.WS()
	if !s.Eat('{') {
		return false
	}
	for first := true; ; first = false {
		s.WS()
		if s.Eat('}') {
			break
		}
		if !first && !s.Eat(',') {
			return false
		}
		s.WS()
		key, ok := s.Str()
		if !ok {
			return false
		}
		s.WS()
		if !s.Eat(':') {
			return false
		}
		s.WS()
		if !fn(key) {
			return false
		}
	}
	s.WS()
	return s.I == len(s.B)
}

var errSlow = errors.New("not the common shape")

// DecodeRequest decodes one request line into a zeroed r, with the result
// json.Unmarshal would give. The common shape is read by hand (requests are
// the edge's hottest input after publishes' payloads); any other input goes
// through encoding/json, whose errors and partial results (the id, for the
// error reply) are what the caller sees. FuzzDecodeRequest holds the two to
// the same results.
func DecodeRequest(line []byte, r *Request) error {
	if decodeRequestFast(line, r) == nil {
		return nil
	}
	// Unmarshal into a copy: r itself then does not escape to the heap, so
	// a caller's Request costs no allocation on the fast path.
	var slow Request
	err := json.Unmarshal(line, &slow)
	*r = slow
	return err
}

// decodeRequestFast accepts only keys spelled exactly as the protocol
// spells them (encoding/json also matches other cases), strings without
// escapes in valid UTF-8 (encoding/json would replace invalid bytes), and
// integers in JSON's own form that fit their fields. Everything else it
// declines, leaving encoding/json to decide.
func decodeRequestFast(line []byte, r *Request) error {
	*r = Request{}
	s := Scanner{B: line}
	ok := s.Fields(func(key []byte) bool {
		switch string(key) {
		case "id":
			n, ok := s.Int()
			r.ID = n
			return ok
		case "op":
			v, ok := s.Str()
			r.Op = opString(v)
			return ok
		case "room", "to", "msg_id", "traceparent", "tracestate":
			v, ok := s.Str()
			switch string(key) {
			case "room":
				r.Room = string(v)
			case "to":
				r.To = string(v)
			case "msg_id":
				r.MsgID = string(v)
			case "traceparent":
				r.Traceparent = string(v)
			default:
				r.Tracestate = string(v)
			}
			return ok
		case "since":
			n, ok := s.Uint()
			r.Since = &n
			return ok
		case "last":
			n, ok := s.Int()
			if !ok || n < -1<<31 || n > 1<<31-1 {
				return false // beyond int on 32-bit platforms: encoding/json decides
			}
			last := int(n)
			r.Last = &last
			return true
		case "before":
			n, ok := s.Uint()
			r.Before = n
			return ok
		case "limit":
			n, ok := s.Int()
			if !ok || n < -1<<31 || n > 1<<31-1 {
				return false
			}
			r.Limit = int(n)
			return true
		case "data":
			start := s.I
			if !s.Skip() {
				return false
			}
			// Skip has checked the grammar, and a RawMessage keeps the
			// bytes as they are (invalid UTF-8 included), as encoding/json
			// does.
			r.Data = append(json.RawMessage(nil), line[start:s.I]...)
			return true
		}
		return false
	})
	if !ok {
		return errSlow
	}
	return nil
}

// opString returns the op as a constant when it is one of the protocol's,
// saving the allocation of a string per request.
func opString(v []byte) string {
	switch string(v) {
	case OpSub:
		return OpSub
	case OpUnsub:
		return OpUnsub
	case OpPub:
		return OpPub
	case OpHistory:
		return OpHistory
	case OpPresence:
		return OpPresence
	case OpPing:
		return OpPing
	}
	return string(v)
}
