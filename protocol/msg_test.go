package protocol

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// A backend can publish invalid UTF-8 inside a JSON string (encoding/json
// accepts it); the push carries \ufffd instead, or browsers would fail the
// connection.
func TestPushReplacesInvalidUTF8InData(t *testing.T) {
	for _, tc := range []struct{ payload, data string }{
		{`{"from":"bot","data":{"text":"a` + "\xff" + `b"}}`, `{"text":"a\ufffdb"}`},
		{`"` + "\xc3" + `"`, `"\ufffd"`},
		// A truncated sequence: each byte is replaced, as encoding/json does.
		{`["` + "\xe2\x80" + `x"]`, `["\ufffd\ufffdx"]`},
		// A UTF-8-encoded surrogate is not valid UTF-8 either.
		{`"` + "\xed\xa0\x80" + `"`, `"\ufffd\ufffd\ufffd"`},
		// Valid multi-byte text and escapes stay as they are.
		{`{"data":["é` + "\xff" + `\"\\\u00e9"]}`, `["é\ufffd\"\\\u00e9"]`},
		// Whitespace around and between tokens goes, the string keeps its spaces.
		{"{\"data\":{\n  \"a\" : \"x y\xff\"\r\n}}", `{"a":"x y\ufffd"}`},
	} {
		env := DecodeEnvelope([]byte(tc.payload))
		push := AppendMsg(nil, &Msg{Op: OpMsg, Room: "lobby", Seq: 1, TS: 2, Data: env.Data})
		if !utf8.Valid(push) || !json.Valid(push) {
			t.Errorf("%q: push %q is not valid UTF-8 JSON", tc.payload, push)
			continue
		}
		want := `{"op":"msg","room":"lobby","seq":1,"ts":2,"data":` + tc.data + `}`
		if string(push) != want {
			t.Errorf("%q:\npush %s\nwant %s", tc.payload, push, want)
		}
	}
}

// U+2028 and U+2029 are valid JSON but end a line in older JavaScript; data
// carries them escaped, as AppendString writes them in other fields.
func TestPushEscapesLineSeparatorsInData(t *testing.T) {
	env := DecodeEnvelope([]byte("{\"data\":\"a\u2028b\u2029c\"}"))
	push := AppendMsg(nil, &Msg{Op: OpMsg, Seq: 1, TS: 2, Data: env.Data})
	want := `{"op":"msg","seq":1,"ts":2,"data":"a\u2028b\u2029c"}`
	if string(push) != want {
		t.Errorf("push %s\nwant %s", push, want)
	}
	var m Msg
	if err := json.Unmarshal(push, &m); err != nil || string(m.Data) != `"a\u2028b\u2029c"` {
		t.Errorf("decoded %q, %v", m.Data, err)
	}
}

// from and msg_id of an envelope go through encoding/json (which replaces
// invalid UTF-8 when it decodes a string) and then AppendString (which would
// replace it again): the push is valid UTF-8 either way, and so is anything
// put into those fields by other means, such as a Nats-Msg-Id header.
func TestPushReplacesInvalidUTF8InFromAndMsgID(t *testing.T) {
	env := DecodeEnvelope([]byte(`{"from":"bo` + "\xff" + `t","msg_id":"m` + "\xc3" + `\u2028","data":1}`))
	if env.From != "bo\ufffdt" || env.MsgID != "m\ufffd\u2028" {
		t.Fatalf("envelope from %q msg_id %q", env.From, env.MsgID)
	}
	push := AppendMsg(nil, &Msg{Op: OpMsg, Seq: 1, MsgID: env.MsgID, From: env.From, TS: 2, Data: env.Data})
	want := `{"op":"msg","seq":1,"msg_id":"m` + "\ufffd" + `\u2028","from":"bo` + "\ufffd" + `t","ts":2,"data":1}`
	if string(push) != want {
		t.Errorf("push %s\nwant %s", push, want)
	}
	push = AppendMsg(nil, &Msg{Op: OpMsg, Seq: 1, MsgID: "hdr\xff\n", From: "x\xe2\x80", TS: 2, Data: env.Data})
	want = `{"op":"msg","seq":1,"msg_id":"hdr\ufffd\n","from":"x\ufffd\ufffd","ts":2,"data":1}`
	if string(push) != want {
		t.Errorf("push %s\nwant %s", push, want)
	}
}

// Data that is not valid JSON never reaches AppendMsg through DecodeEnvelope;
// if it did, it is pushed as a JSON string rather than as broken JSON.
func TestPushInvalidJSONDataBecomesString(t *testing.T) {
	push := AppendMsg(nil, &Msg{Op: OpMsg, Seq: 1, TS: 2, Data: json.RawMessage("{\"a\":\n")})
	want := `{"op":"msg","seq":1,"ts":2,"data":"{\"a\":\n"}`
	if string(push) != want {
		t.Errorf("push %s\nwant %s", push, want)
	}
}

// The common case is copied as it is, without allocating beyond dst.
func TestPushSafeDataCopiedWithoutAllocating(t *testing.T) {
	m := benchMsg()
	dst := make([]byte, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() { dst = AppendMsg(dst[:0], m) })
	if allocs != 0 {
		t.Errorf("%v allocations per AppendMsg", allocs)
	}
	if !bytes.Contains(dst, m.Data) {
		t.Errorf("data not copied as it is: %s", dst)
	}
}

func benchMsg() *Msg {
	return &Msg{Op: OpMsg, Room: "lobby", Seq: 123456, MsgID: "c-9", From: "alice", TS: 1764050400123,
		Data: json.RawMessage(`{"t":1764050400123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","q":"“quoted” – café"}`)}
}

func BenchmarkAppendMsg(b *testing.B) {
	m := benchMsg()
	b.Run("safe", func(b *testing.B) {
		b.ReportAllocs()
		dst := make([]byte, 0, 1024)
		for range b.N {
			dst = AppendMsg(dst[:0], m)
		}
	})
	// A payload that needs rewriting: the rare path.
	bad := *m
	bad.Data = json.RawMessage("{\n  \"t\": 1764050400123456789,\n  \"p\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\xff\u2028\"\n}")
	b.Run("rewritten", func(b *testing.B) {
		b.ReportAllocs()
		dst := make([]byte, 0, 1024)
		for range b.N {
			dst = AppendMsg(dst[:0], &bad)
		}
	})
}
