package protocol

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
)

// FuzzDecodeRequest holds DecodeRequest to encoding/json, the reference:
// whatever the input, both accept or both refuse it, and they produce the
// same Request (the partial result matters on error too: its id goes into the
// error reply). The hand decoder may decline anything and fall back; it must
// never accept an input with a result of its own.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"id":1,"op":"sub","room":"lobby"}`,
		`{"id":2,"op":"sub","room":"lobby","since":41}`,
		`{"id":3,"op":"sub","room":"lobby","last":-1}`,
		`{"id":4,"op":"pub","room":"lobby","msg_id":"c-9","data":{"text":"hi","n":[1,2.5e-3,{"x":null}],"q":"a\"b"}}`,
		`{"id":5,"op":"pub","to":"bob","data":"psst"}`,
		`{"id":6,"op":"history","room":"lobby","before":42,"limit":50}`,
		` { "id" : 7 , "op" : "ping" } `,
		`{"id":01,"op":"ping"}`,
		`{"id":-0,"op":"ping"}`,
		`{"id":-01,"op":"ping"}`,
		`{"id":1,"op":"sub","room":"lobby","since":00}`,
		`{"id":9223372036854775808,"op":"ping"}`,
		`{"id":-9223372036854775808,"op":"ping"}`,
		`{"op":"pub","room":"r","data":01}`,
		`{"op":"pub","room":"r","data":[1,]}`,
		`{"op":"pub","room":"r","data":{1:2}}`,
		`{"op":"pub","room":"r","data":"\x"}`,
		`{"op":"pub","room":"r","data":"a` + "\xff" + `b"}`,
		`{"op":"sub","room":"caf` + "\xc3" + `"}`,
		`{"ID":1,"Op":"ping"}`,
		`{"id":1,"id":2,"op":"ping","op":"sub"}`,
		`{"op":null,"since":null,"data":null}`,
		`{"op":"ping"}x`,
		`{"op":"pub","room":"r","data":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
		"{\"op\":\"pub\",\"room\":\"r\",\"data\":\"\u2028\"}",
		`{"id":8,"op":"pub","room":"lobby","data":1,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"congo=t61rcWkgMzE"}`,
		`{"op":"presence","room":"lobby","traceparent":"\u0030\u0030-x"}`,
		`{"op":"pub","traceparent":7}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var got, want Request
		errGot := DecodeRequest(line, &got)
		errWant := json.Unmarshal(line, &want)
		if (errGot == nil) != (errWant == nil) {
			t.Fatalf("%q: DecodeRequest error %v, encoding/json error %v", line, errGot, errWant)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\nDecodeRequest %s\nencoding/json %s", line, dump(&got), dump(&want))
		}
	})
}

// dump shows a Request with its pointers followed and Data as text, so a
// failure names the differing field.
func dump(r *Request) string {
	since, last := "nil", "nil"
	if r.Since != nil {
		since = fmt.Sprint(*r.Since)
	}
	if r.Last != nil {
		last = fmt.Sprint(*r.Last)
	}
	return fmt.Sprintf("id=%d op=%q room=%q to=%q since=%s last=%s msg_id=%q before=%d limit=%d traceparent=%q tracestate=%q token=%q data=%q (nil %t)",
		r.ID, r.Op, r.Room, r.To, since, last, r.MsgID, r.Before, r.Limit, r.Traceparent, r.Tracestate, r.Token, r.Data, r.Data == nil)
}
