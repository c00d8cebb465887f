package protocol

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzEnvelopePush feeds whatever a backend could publish through the live
// path (DecodeEnvelope, then AppendMsg) and checks what a client receives:
// one line of valid JSON in valid UTF-8, no raw U+2028/U+2029, carrying the
// same message. from and msg_id are fuzzed both inside an envelope (raw, so
// their bytes reach encoding/json unescaped) and as the Nats-Msg-Id header
// that stands in for a missing msg_id.
func FuzzEnvelopePush(f *testing.F) {
	for _, seed := range []struct{ payload, from, msgID string }{
		{`{"from":"deploy-bot","data":{"text":"hi"}}`, "bot", "m-1"},
		{`{"data":"a` + "\xff" + `b"}`, "bo\xfft", "m\xc3"},
		{"{\"data\":\"\u2028\u2029\"}", "a\u2028", "b\u2029"},
		{"{\n  \"data\": {\n    \"a\": [1, 2]\r\n  }\n}\n", "x", ""},
		{"plain text \xff from nats pub\n", "", "hdr"},
		{`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`, "", ""},
		{`{"data":"\ud800\u2028\\\"` + "\xed\xa0\x80" + `"}`, "", ""},
		{`{"DATA":null,"From":"x"}`, "", ""},
		{`{"from":"x"}`, "", ""},
		{`"\u0000"`, "\x00", "\n"},
		{"", "", ""},
	} {
		f.Add([]byte(seed.payload), seed.from, seed.msgID)
	}
	f.Fuzz(func(t *testing.T, payload []byte, from, msgID string) {
		checkPush(t, payload, msgID)
		// The same data wrapped in an envelope whose from and msg_id hold
		// the fuzzed bytes as they are.
		var env bytes.Buffer
		env.WriteString(`{"from":"` + from + `","msg_id":"` + msgID + `","data":`)
		env.Write(payload)
		env.WriteString(`}`)
		checkPush(t, env.Bytes(), msgID)
	})
}

func checkPush(t *testing.T, payload []byte, hdrMsgID string) {
	t.Helper()
	env := DecodeEnvelope(payload)
	if !json.Valid(env.Data) {
		t.Fatalf("%q: envelope data %q is not JSON", payload, env.Data)
	}
	msgID := env.MsgID
	if msgID == "" {
		msgID = hdrMsgID // as the edge does with the Nats-Msg-Id header
	}
	in := Msg{Op: OpMsg, Room: "lobby", Seq: 42, MsgID: msgID, From: env.From, TS: -1764050400123, Data: env.Data}
	push := AppendMsg(nil, &in)
	switch {
	case !json.Valid(push):
		t.Fatalf("%q: push is not JSON: %q", payload, push)
	case !utf8.Valid(push):
		t.Fatalf("%q: push is not UTF-8: %q", payload, push)
	case bytes.ContainsAny(push, "\n\r"):
		t.Fatalf("%q: push holds a raw line break: %q", payload, push)
	case bytes.Contains(push, []byte("\u2028")) || bytes.Contains(push, []byte("\u2029")):
		t.Fatalf("%q: push holds a raw U+2028/U+2029: %q", payload, push)
	}
	var out Msg
	if err := json.Unmarshal(push, &out); err != nil {
		t.Fatalf("%q: push %q: %v", payload, push, err)
	}
	if out.Op != in.Op || out.Room != in.Room || out.Seq != in.Seq || out.TS != in.TS {
		t.Fatalf("%q: push %q decodes to op %q room %q seq %d ts %d", payload, push, out.Op, out.Room, out.Seq, out.TS)
	}
	// Strings read back with each invalid byte as U+FFFD, as encoding/json
	// reads them.
	if out.From != replaceInvalid(in.From) || out.MsgID != replaceInvalid(in.MsgID) {
		t.Fatalf("%q: push %q decodes to from %q msg_id %q", payload, push, out.From, out.MsgID)
	}
	// The data means what encoding/json reads from what the backend sent.
	if want, got := decodeAny(t, env.Data), decodeAny(t, out.Data); !reflect.DeepEqual(want, got) {
		t.Fatalf("%q: data %q decodes to %#v, push data %q to %#v", payload, env.Data, want, out.Data, got)
	}
}

// replaceInvalid replaces each byte of invalid UTF-8 with U+FFFD.
func replaceInvalid(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r)
	}
	return b.String()
}

func decodeAny(t *testing.T, raw []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	return v
}
