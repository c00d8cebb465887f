package client

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/parley-mesh/parley/protocol"
)

// The fast decoder agrees with encoding/json on everything the edge sends,
// and refuses (to the slow path) what it does not handle.
func TestDecodeMsgPushMatchesEncodingJSON(t *testing.T) {
	var msgs []protocol.Msg
	for _, data := range []string{`1`, `"x"`, `{"text":"hi","n":[1,2,{"a":null}],"s":"q\"uote"}`, `[]`, `{}`, `true`, `-1.5e3`, `"\u00e9\n"`} {
		msgs = append(msgs,
			protocol.Msg{Op: "msg", Room: "lobby", Seq: 42, MsgID: "c-9", From: "alice", TS: 1764050400123, Data: json.RawMessage(data)},
			protocol.Msg{Op: "msg", To: "bob", Seq: 1, TS: 1, Data: json.RawMessage(data)},
			protocol.Msg{Op: "msg", Seq: 18446744073709551615, Data: json.RawMessage(data)})
	}
	for _, m := range msgs {
		line := protocol.AppendMsg(nil, &m)
		var fast, slow wire
		if err := decodeMsgPush(line, &fast); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if err := json.Unmarshal(line, &slow); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%s:\nfast %+v\nslow %+v", line, fast, slow)
		}
	}
	for _, line := range []string{
		`{"id":1,"ok":true}`,
		`{"op":"join","room":"lobby","user":"bob"}`,
		`{"op":"msg","room":"lo\"bby","seq":1,"ts":1,"data":1}`,
		`{"op":"msg","room":"lobby","seq":-1,"ts":1,"data":1}`,
		`{"op":"msg","room":"lobby","seq":1,"ts":1,"data":{"a":1}`,
		`{"op":"msg","room":"lobby","seq":1,"ts":1,"data":"unterminated}`,
		`{"op":"msg","room":"lobby","seq":1,"ts":1,"data":1} trailing`,
		`{"op":"msg","room":"lobby","seq":1,"ts":1,"data":1,"new_field":2}`,
	} {
		var w wire
		if err := decodeMsgPush([]byte(line), &w); err == nil {
			t.Errorf("%s: accepted by the fast path as %+v", line, w)
		}
	}
}

func BenchmarkDecodeMsgPush(b *testing.B) {
	line := protocol.AppendMsg(nil, &protocol.Msg{Op: "msg", Room: "lobby", Seq: 123456, MsgID: "c-9", From: "alice", TS: 1764050400123, Data: json.RawMessage(`{"t":1764050400123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var w wire
			if err := decodeMsgPush(line, &w); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var w wire
			if err := json.Unmarshal(line, &w); err != nil {
				b.Fatal(err)
			}
		}
	})
}
