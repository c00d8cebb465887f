package protocol

import (
	"encoding/json"
	"reflect"
	"testing"
)

// The hand decoder and encoding/json agree on every request, whichever of
// them ends up reading it.
func TestDecodeRequestMatchesEncodingJSON(t *testing.T) {
	for _, line := range []string{
		`{"id":1,"op":"sub","room":"lobby"}`,
		`{"id":2,"op":"sub","room":"lobby","since":41}`,
		`{"id":3,"op":"sub","room":"lobby","last":20}`,
		`{"id":4,"op":"pub","room":"lobby","msg_id":"c-9","data":{"text":"hi","n":[1,2.5,{"x":null}],"q":"a\"b"}}`,
		`{"id":5,"op":"pub","to":"bob","data":"psst"}`,
		`{"id":6,"op":"history","room":"lobby","before":42,"limit":50}`,
		`{"op":"ping"}`,
		` { "id" : 7 , "op" : "ping" } `,
		`{"id":8,"op":"pub","room":"lobby","data":null}`,
		`{"id":9,"op":"pub","room":"lobby","data":[]}`,
		`{"id":-3,"op":"ping"}`,
		`{"id":10,"op":"sub","room":"caf\u00e9"}`,
		`{"id":11,"op":"sub","room":5}`,
		`{"id":12,"op":"sub","room":"x","extra":{"a":1}}`,
		`{"id":13,"op":"pub","room":"lobby","data":{"a":1}`,
		`{"id":14,"op":"sub","room":"lobby","last":-1}`,
		`{"id":1.5,"op":"ping"}`,
		`[1,2]`,
		`{"id":15,"op":"pub","room":"r","data":tru}`,
	} {
		var fast, slow Request
		errFast := DecodeRequest([]byte(line), &fast)
		errSlow := json.Unmarshal([]byte(line), &slow)
		if (errFast == nil) != (errSlow == nil) {
			t.Errorf("%s: DecodeRequest %v, encoding/json %v", line, errFast, errSlow)
			continue
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Errorf("%s:\nDecodeRequest %+v\nencoding/json %+v", line, fast, slow)
		}
	}
}

func BenchmarkDecodeRequest(b *testing.B) {
	line := []byte(`{"id":12345,"op":"pub","room":"lobby","msg_id":"m123-45","data":{"t":1764050400123456789,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}`)
	b.Run("scanner", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var r Request
			if err := DecodeRequest(line, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			var r Request
			if err := json.Unmarshal(line, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
