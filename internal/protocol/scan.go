package protocol

import (
	"encoding/json"
	"errors"
	"strconv"
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

// Uint reads a non-negative integer.
func (s *Scanner) Uint() (uint64, bool) {
	start := s.I
	for s.I < len(s.B) && s.B[s.I] >= '0' && s.B[s.I] <= '9' {
		s.I++
	}
	if s.I == start || s.I-start > 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(s.B[start:s.I]), 10, 64)
	return n, err == nil
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

// Skip passes over one JSON value of any kind, checking its structure
// enough to find where it ends.
func (s *Scanner) Skip() bool { return s.skip(0) }

func (s *Scanner) skip(depth int) bool {
	if depth > 64 || s.I >= len(s.B) {
		return false
	}
	switch c := s.B[s.I]; {
	case c == '"':
		s.I++
		for s.I < len(s.B) {
			switch s.B[s.I] {
			case '\\':
				s.I += 2
				continue
			case '"':
				s.I++
				return true
			}
			s.I++
		}
		return false
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.I++
		s.WS()
		if s.Eat(end) {
			return true
		}
		for {
			s.WS()
			if c == '{' {
				if !s.skip(depth + 1) {
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
		}
	default: // number, true, false, null
		start := s.I
		for s.I < len(s.B) {
			switch s.B[s.I] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return s.I > start
			}
			s.I++
		}
		return s.I > start
	}
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

// DecodeRequest decodes one request line. The common shape is read by hand
// (requests are the edge's hottest input after publishes' payloads); any
// other input goes through encoding/json, whose errors and partial results
// (the id, for the error reply) are what the caller sees.
func DecodeRequest(line []byte, r *Request) error {
	if decodeRequestFast(line, r) == nil {
		return nil
	}
	*r = Request{}
	return json.Unmarshal(line, r)
}

func decodeRequestFast(line []byte, r *Request) error {
	s := Scanner{B: line}
	ok := s.Fields(func(key []byte) bool {
		switch string(key) {
		case "id":
			n, ok := s.Int()
			r.ID = n
			return ok
		case "op", "room", "to", "msg_id":
			v, ok := s.Str()
			switch string(key) {
			case "op":
				r.Op = string(v)
			case "room":
				r.Room = string(v)
			case "to":
				r.To = string(v)
			default:
				r.MsgID = string(v)
			}
			return ok
		case "since":
			n, ok := s.Uint()
			r.Since = &n
			return ok
		case "last":
			n, ok := s.Int()
			if n < -1<<31 || n > 1<<31-1 {
				return false
			}
			last := int(n)
			r.Last = &last
			return ok
		case "before":
			n, ok := s.Uint()
			r.Before = n
			return ok
		case "limit":
			n, ok := s.Int()
			if n < -1<<31 || n > 1<<31-1 {
				return false
			}
			r.Limit = int(n)
			return ok
		case "data":
			start := s.I
			if !s.Skip() {
				return false
			}
			r.Data = append(json.RawMessage(nil), line[start:s.I]...)
			return json.Valid(r.Data)
		}
		return false
	})
	if !ok {
		return errSlow
	}
	return nil
}
