package client

import (
	"errors"
	"strconv"
	"unicode/utf8"
)

// errSlowPath sends a line to encoding/json: the fast decoder only handles
// what the edge writes for msg pushes.
var errSlowPath = errors.New("not a plain msg push")

// decodeMsgPush reads a "msg" push without reflection: a flat JSON object
// whose strings carry no escapes, whose numbers are plain integers, and
// whose "data" is any JSON value (kept raw). Anything else, or any other op,
// returns errSlowPath and goes through encoding/json. Fan-out delivers far
// more pushes than anything else, so this is the client's hot path.
func decodeMsgPush(line []byte, w *wire) error {
	s := scanner{b: line}
	s.ws()
	if !s.eat('{') {
		return errSlowPath
	}
	for first := true; ; first = false {
		s.ws()
		if s.eat('}') {
			break
		}
		if !first && !s.eat(',') {
			return errSlowPath
		}
		s.ws()
		key, ok := s.str()
		if !ok {
			return errSlowPath
		}
		s.ws()
		if !s.eat(':') {
			return errSlowPath
		}
		s.ws()
		switch string(key) {
		case "op":
			v, ok := s.str()
			if !ok {
				return errSlowPath
			}
			w.Op = string(v)
		case "room", "to", "msg_id", "from":
			v, ok := s.str()
			if !ok {
				return errSlowPath
			}
			switch string(key) {
			case "room":
				w.Room = string(v)
			case "to":
				w.To = string(v)
			case "msg_id":
				w.MsgID = string(v)
			default:
				w.From = string(v)
			}
		case "seq":
			n, ok := s.uint()
			if !ok {
				return errSlowPath
			}
			w.Seq = &n
		case "ts":
			n, ok := s.uint()
			if !ok {
				return errSlowPath
			}
			w.TS = int64(n)
		case "data":
			start := s.i
			if !s.skip(0) {
				return errSlowPath
			}
			w.Data = append([]byte(nil), line[start:s.i]...)
		default:
			return errSlowPath
		}
	}
	s.ws()
	if s.i != len(line) || w.Op != "msg" {
		return errSlowPath
	}
	return nil
}

type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\r' || s.b[s.i] == '\n') {
		s.i++
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str reads a string without escapes and returns its contents.
func (s *scanner) str() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, utf8.Valid(v)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		s.i++
	}
	return nil, false
}

func (s *scanner) uint() (uint64, bool) {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	if s.i == start || s.i-start > 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(s.b[start:s.i]), 10, 64)
	return n, err == nil
}

// skip passes over one JSON value of any kind, checking its structure
// enough to find where it ends; encoding/json validates it if the
// application decodes it.
func (s *scanner) skip(depth int) bool {
	if depth > 64 || s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		s.i++
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '\\':
				s.i += 2
				continue
			case '"':
				s.i++
				return true
			}
			s.i++
		}
		return false
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		s.ws()
		if s.eat(end) {
			return true
		}
		for {
			s.ws()
			if c == '{' {
				if !s.skip(depth + 1) {
					return false
				}
				s.ws()
				if !s.eat(':') {
					return false
				}
				s.ws()
			}
			if !s.skip(depth + 1) {
				return false
			}
			s.ws()
			if s.eat(end) {
				return true
			}
			if !s.eat(',') {
				return false
			}
		}
	default: // number, true, false, null
		start := s.i
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return s.i > start
			}
			s.i++
		}
		return s.i > start
	}
}
