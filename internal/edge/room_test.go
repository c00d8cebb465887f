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

// The room's recent messages serve a resume only when they cover it without
// a hole: a gap that could not be repaired starts a new run, and since
// before the run (or too many messages) goes to the stream.
func TestRoomRecentMessages(t *testing.T) {
	seqs := func(ds []Delivery) []uint64 {
		out := []uint64{}
		for _, d := range ds {
			out = append(out, d.Seq)
		}
		return out
	}
	r := newRoom("chat.room.x", func(int) {}, func(_ string, from, upTo uint64) []Delivery {
		return nil // the stream cannot fill any gap
	})
	r.recentMax = 4
	r.learn(10)
	r.deliver(Delivery{Seq: 12, LastSeq: 10}) // follows the learned position
	r.deliver(Delivery{Seq: 15, LastSeq: 12})
	r.deliver(Delivery{Seq: 20, LastSeq: 15})
	if got, ok := r.since(10, 20, 100); !ok || !slices.Equal(seqs(got), []uint64{12, 15, 20}) {
		t.Fatalf("since 10: %v %v", seqs(got), ok)
	}
	if got, ok := r.since(13, 15, 100); !ok || !slices.Equal(seqs(got), []uint64{15}) {
		t.Fatalf("since 13 up to 15: %v %v", seqs(got), ok)
	}
	if _, ok := r.since(9, 20, 100); ok {
		t.Fatal("since 9 is before what the room holds")
	}
	if _, ok := r.since(10, 20, 2); ok {
		t.Fatal("more than max must go to the stream")
	}
	if got, ok := r.latest(2, 20); !ok || !slices.Equal(seqs(got), []uint64{15, 20}) {
		t.Fatalf("latest 2: %v %v", seqs(got), ok)
	}
	// 25's predecessor is 22, which never arrived and could not be repaired:
	// a new run starts at 22.
	r.deliver(Delivery{Seq: 25, LastSeq: 22})
	if _, ok := r.since(20, 25, 100); ok {
		t.Fatal("served across an unrepaired gap")
	}
	if got, ok := r.since(22, 25, 100); !ok || !slices.Equal(seqs(got), []uint64{25}) {
		t.Fatalf("since 22 after the gap: %v %v", seqs(got), ok)
	}
	if _, ok := r.latest(2, 25); ok {
		t.Fatal("latest 2 reaches across the gap")
	}
	// The run is bounded: older messages are dropped and the run's start
	// moves with them.
	for s := uint64(26); s < 40; s++ {
		r.deliver(Delivery{Seq: s, LastSeq: s - 1})
	}
	if len(r.recent) > 2*r.recentMax {
		t.Fatalf("%d recent messages kept, bound %d", len(r.recent), 2*r.recentMax)
	}
	if _, ok := r.since(25, 39, 100); ok {
		t.Fatalf("served since 25 though the run now starts after %d", r.recentFrom)
	}
	if got, ok := r.since(36, 39, 100); !ok || !slices.Equal(seqs(got), []uint64{37, 38, 39}) {
		t.Fatalf("since 36: %v %v", seqs(got), ok)
	}
}
