package edge

import (
	"slices"
	"sync"
	"testing"
)

type recordingSub struct {
	mu     sync.Mutex
	frames []string
}

func (r *recordingSub) deliver(b []byte) {
	r.mu.Lock()
	r.frames = append(r.frames, string(b))
	r.mu.Unlock()
}

// A live message whose Nats-Last-Sequence is ahead of the room's last
// delivered seq triggers a repair, delivered before it; duplicates and
// replays of old seqs are dropped; a subscriber starting at a position
// gets only what follows it, including what arrived while it synced.
func TestRoomGapRepairAndSeam(t *testing.T) {
	var repaired [][2]uint64
	r := newRoom("chat.room.x", func(int) {}, func(_ string, from, upTo uint64) []Delivery {
		repaired = append(repaired, [2]uint64{from, upTo})
		return []Delivery{{Seq: 3, Frame: []byte("3")}}
	})
	early, late := &recordingSub{}, &recordingSub{}
	r.add(early, 10)
	r.learn(0)
	r.start(early, 0, []byte("reply-early"))

	r.deliver(Delivery{Seq: 1, LastSeq: 0, Frame: []byte("1")})
	r.add(late, 10) // syncing: held back
	r.deliver(Delivery{Seq: 5, LastSeq: 3, Frame: []byte("5")})
	r.deliver(Delivery{Seq: 5, LastSeq: 3, Frame: []byte("5")}) // duplicate
	r.deliver(Delivery{Seq: 6, LastSeq: 5, Frame: []byte("6")})
	r.start(late, 3, []byte("reply-late"))
	r.deliver(Delivery{Seq: 8, LastSeq: 6, Frame: []byte("8")})

	if !slices.Equal(repaired, [][2]uint64{{2, 3}}) {
		t.Fatalf("repairs %v, want [[2 3]]", repaired)
	}
	if want := []string{"reply-early", "1", "3", "5", "6", "8"}; !slices.Equal(early.frames, want) {
		t.Fatalf("early subscriber got %v, want %v", early.frames, want)
	}
	if want := []string{"reply-late", "5", "6", "8"}; !slices.Equal(late.frames, want) {
		t.Fatalf("late subscriber got %v, want %v", late.frames, want)
	}
}

func TestPubAckDecode(t *testing.T) {
	for in, want := range map[string]pubAck{
		`{"stream":"PARLEY_CHAT","seq":42}`:                                 {Seq: 42},
		`{"stream":"PARLEY_CHAT","seq":7,"duplicate":true}`:                 {Seq: 7, Duplicate: true},
		`{"stream":"PARLEY_CHAT","domain":"hub","seq":9,"duplicate":false}`: {Seq: 9},
	} {
		var got pubAck
		if err := got.decode([]byte(in)); err != nil || got != want {
			t.Errorf("%s: %+v %v", in, got, err)
		}
	}
	var got pubAck
	if err := got.decode([]byte(`{"error":{"code":400,"err_code":10054,"description":"maximum message size exceeded"},"stream":"PARLEY_CHAT","seq":0}`)); err != nil ||
		got.Error == nil || got.Error.ErrorCode != 10054 {
		t.Errorf("error ack: %+v %v", got, err)
	}
}
