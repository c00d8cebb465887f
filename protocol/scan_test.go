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
		`{"id":01,"op":"ping"}`,
		`{"id":16,"op":"pub","room":"r","data":{1:2}}`,
		`{"id":17,"op":"pub","room":"r","data":[1,]}`,
		`{"id":18,"op":"pub","room":"r","data":"\x"}`,
		`{"id":19,"op":"pub","room":"r","data":-}`,
		`{"ID":20,"Op":"ping"}`,
		"{\"id\":21,\"op\":\"sub\",\"room\":\"caf\xc3\"}",
		`{"id":22,"op":"sub","room":"r","since":18446744073709551616}`,
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

// JSON forbids leading zeros and encoding/json refuses them; the hand
// decoder used to read {"id":01} as id 1.
func TestDecodeRequestRejectsLeadingZeros(t *testing.T) {
	for _, line := range []string{
		`{"id":01,"op":"ping"}`,
		`{"id":00,"op":"ping"}`,
		`{"id":-01,"op":"ping"}`,
		`{"op":"sub","room":"lobby","since":007}`,
		`{"op":"sub","room":"lobby","last":01}`,
		`{"op":"history","room":"lobby","before":01,"limit":050}`,
	} {
		var r Request
		if err := DecodeRequest([]byte(line), &r); err == nil {
			t.Errorf("%s: accepted as %+v", line, r)
		}
		if decodeRequestFast([]byte(line), &r) == nil {
			t.Errorf("%s: the hand decoder accepted it", line)
		}
	}
	// A lone zero, and minus zero, are JSON.
	var r Request
	if err := DecodeRequest([]byte(`{"id":-0,"op":"sub","room":"lobby","since":0}`), &r); err != nil || r.ID != 0 || r.Since == nil || *r.Since != 0 {
		t.Errorf("-0 and 0: %+v, %v", r, err)
	}
}

// The request shape of the benchmark takes the hand decoder, without
// allocating for the Request itself or for a known op.
func TestDecodeRequestFastPathAllocations(t *testing.T) {
	line := []byte(`{"id":1,"op":"pub","room":"lobby","data":{"a":[1,"x"]}}`)
	var r Request
	if decodeRequestFast(line, &r) != nil {
		t.Fatal("declined")
	}
	// room and data.
	if allocs := testing.AllocsPerRun(100, func() { _ = DecodeRequest(line, &r) }); allocs > 2 {
		t.Errorf("%v allocations", allocs)
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
