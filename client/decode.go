package client

import (
	"errors"

	"github.com/parley-mesh/parley/protocol"
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
	s := protocol.Scanner{B: line}
	ok := s.Fields(func(key []byte) bool {
		switch string(key) {
		case "op", "room", "to", "msg_id", "from":
			v, ok := s.Str()
			switch string(key) {
			case "op":
				w.Op = string(v)
			case "room":
				w.Room = string(v)
			case "to":
				w.To = string(v)
			case "msg_id":
				w.MsgID = string(v)
			default:
				w.From = string(v)
			}
			return ok
		case "seq":
			n, ok := s.Uint()
			w.Seq = &n
			return ok
		case "ts":
			n, ok := s.Int()
			w.TS = n
			return ok
		case "data":
			start := s.I
			if !s.Skip() {
				return false
			}
			w.Data = append([]byte(nil), line[start:s.I]...)
			return true
		}
		return false
	})
	if !ok || w.Op != protocol.OpMsg {
		return errSlowPath
	}
	return nil
}
