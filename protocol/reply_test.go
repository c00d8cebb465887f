package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// MarshalReply gives what json.Marshal gives: byte for byte where no string
// holds <, > or & (which encoding/json alone escapes), the same JSON value
// always.
func TestMarshalReplyIsJSONMarshal(t *testing.T) {
	u := func(v uint64) *uint64 { return &v }
	b := func(v bool) *bool { return &v }
	for _, r := range []Reply{
		{},
		{ID: 1, OK: true, Room: "lobby", Seq: u(41)},
		{ID: -7, OK: true, Room: "lobby", Seq: u(0), Recovered: b(false), Reason: "stream reset"},
		{ID: 1 << 62, OK: true, Seq: u(1<<64 - 1), Dup: b(true)},
		{ID: 3, OK: true, Room: "r", Users: []string{}},
		{ID: 3, OK: true, Room: "r", Users: []string{"ann", "bo\"b", "c\\d", "é\u2028", "\x01"}},
		{ID: 9, OK: true, Expires: 1767225600000},
		{ID: 2, Error: &Error{Code: CodeBadRequest, Message: "room \"x y\" is not a name:\n\tbad"}},
		{Error: &Error{Code: CodeInternal}},
		{ID: 5, OK: true, Room: "h", Msgs: []json.RawMessage{json.RawMessage(`{"op":"msg", "seq":1}`)}},
		{ID: 5, OK: true, Room: "h", Msgs: []json.RawMessage{}},
		{ID: 6, Error: &Error{Code: CodeForbidden, Message: "<script>&"}, Reason: "a<b"},
		{ID: 8, Room: "bad\xffutf8"},
	} {
		got, err := MarshalReply(&r)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.ContainsAny(string(want), `\<>&`) && !strings.Contains(string(want), `\u`) {
			if string(got) != string(want) {
				t.Errorf("MarshalReply = %s\njson.Marshal  = %s", got, want)
			}
			continue
		}
		var g, w any
		if err := json.Unmarshal(got, &g); err != nil {
			t.Fatalf("MarshalReply gave invalid JSON %s: %v", got, err)
		}
		_ = json.Unmarshal(want, &w)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("MarshalReply = %s\njson.Marshal  = %s (different values)", got, want)
		}
	}
}

func BenchmarkMarshalReply(b *testing.B) {
	seq, rec := uint64(250041), true
	r := Reply{ID: 1, OK: true, Room: "lobby", Seq: &seq, Recovered: &rec}
	b.Run("MarshalReply", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = MarshalReply(&r)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = json.Marshal(&r)
		}
	})
}
