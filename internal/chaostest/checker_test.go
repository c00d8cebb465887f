//go:build unix

package chaostest

import (
	"fmt"
	"testing"
)

// A synthetic trial: one publisher, one room, seqs 10, 20, … 100.
func storedRoom(n int) ([]StoredMsg, []Ack) {
	var stored []StoredMsg
	var acks []Ack
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("m%d", i)
		seq := uint64(10 * i)
		stored = append(stored, StoredMsg{Seq: seq, Room: "r", From: "p", MsgID: id, DedupID: "p:chat.room.r:" + id})
		acks = append(acks, Ack{Publisher: "p", Room: "r", MsgID: id, Seq: seq})
	}
	return stored, acks
}

func ptr[T any](v T) *T { return &v }

func deliver(rec *Recorder, sub string, conn int, seqs ...uint64) {
	for _, s := range seqs {
		rec.deliver(sub, "r", Delivery{Conn: conn, Seq: s, MsgID: fmt.Sprintf("m%d", s/10), From: "p"})
	}
}

func newTrial(acks []Ack) *Recorder {
	rec := NewRecorder()
	for _, a := range acks {
		rec.ack(a)
	}
	rec.addSubscriber("s", false, []string{"r"})
	return rec
}

func TestCheckerClean(t *testing.T) {
	stored, acks := storedRoom(10)
	rec := newTrial(acks)
	rec.subReply("s", "r", SubReply{Conn: 1, Seq: 0})
	deliver(rec, "s", 1, 10, 20, 30, 40)
	// Reconnect and resume from 40.
	rec.subReply("s", "r", SubReply{Conn: 2, Since: ptr(uint64(40)), Seq: 70, Recovered: ptr(true)})
	deliver(rec, "s", 2, 50, 60, 70, 80, 90, 100)
	res := Check(rec, stored, lastSeqs(stored))
	if res.Failed() || res.Checked != 10 || res.Acked != 10 {
		t.Fatalf("clean trial judged %+v", res)
	}
}

func TestCheckerFindsViolations(t *testing.T) {
	stored, acks := storedRoom(10)
	cases := []struct {
		name  string
		setup func(rec *Recorder, stored *[]StoredMsg)
		check func(r Result) bool
	}{
		{"live gap", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 0})
			deliver(rec, "s", 1, 10, 20, 40, 50, 60, 70, 80, 90, 100)
		}, func(r Result) bool { return r.SilentLosses == 1 && r.HiddenByResume == 0 }},
		{"tail never delivered", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 0})
			deliver(rec, "s", 1, 10, 20, 30, 40, 50, 60, 70, 80)
		}, func(r Result) bool { return r.SilentLosses == 2 }},
		{"recovered:true over a hole", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 0})
			deliver(rec, "s", 1, 10, 20, 30)
			rec.subReply("s", "r", SubReply{Conn: 2, Since: ptr(uint64(30)), Seq: 60, Recovered: ptr(true)})
			deliver(rec, "s", 2, 50, 60, 70, 80, 90, 100)
		}, func(r Result) bool { return r.SilentLosses == 1 && r.HiddenByResume == 1 }},
		{"told hole", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 0})
			deliver(rec, "s", 1, 10, 20, 30)
			rec.subReply("s", "r", SubReply{Conn: 2, Since: ptr(uint64(30)), Seq: 60, Recovered: ptr(false), Reason: "retention"})
			deliver(rec, "s", 2, 60, 70, 80, 90, 100)
		}, func(r Result) bool { return !r.Failed() && r.ToldHoles == 2 }},
		{"told hole does not excuse later losses", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 0})
			deliver(rec, "s", 1, 10, 20, 30)
			rec.subReply("s", "r", SubReply{Conn: 2, Since: ptr(uint64(30)), Seq: 60, Recovered: ptr(false)})
			deliver(rec, "s", 2, 50, 60, 80, 90, 100)
		}, func(r Result) bool { return r.ToldHoles == 1 && r.SilentLosses == 1 }},
		{"duplicate", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 0})
			deliver(rec, "s", 1, 10, 20, 30, 40)
			rec.subReply("s", "r", SubReply{Conn: 2, Since: ptr(uint64(40)), Seq: 100, Recovered: ptr(true)})
			deliver(rec, "s", 2, 40, 50, 60, 70, 80, 90, 100)
		}, func(r Result) bool { return r.Duplicates == 1 && r.Reorders == 0 && r.SilentLosses == 0 }},
		{"reorder", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 0})
			deliver(rec, "s", 1, 10, 30, 20, 40, 50, 60, 70, 80, 90, 100)
		}, func(r Result) bool { return r.Reorders == 1 && r.SilentLosses == 0 }},
		{"message before the plain sub's position", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 50})
			deliver(rec, "s", 1, 40, 60, 70, 80, 90, 100)
		}, func(r Result) bool { return r.Reorders == 1 && r.Checked == 5 }},
		{"stored twice", func(rec *Recorder, st *[]StoredMsg) {
			*st = append(*st, StoredMsg{Seq: 110, Room: "r", From: "p", MsgID: "m3", DedupID: "p:chat.room.r:m3"})
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 110})
		}, func(r Result) bool { return r.StoredTwice == 1 }},
		{"acked, not stored", func(rec *Recorder, st *[]StoredMsg) {
			*st = (*st)[1:]
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 100})
		}, func(r Result) bool { return r.AckedNotStored == 1 }},
		{"ack mismatch", func(rec *Recorder, _ *[]StoredMsg) {
			rec.ack(Ack{Publisher: "p", Room: "r", MsgID: "m1", Seq: 20, Dup: true})
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 100})
		}, func(r Result) bool { return r.AckMismatch == 1 }},
		{"phantom", func(rec *Recorder, _ *[]StoredMsg) {
			rec.subReply("s", "r", SubReply{Conn: 1, Seq: 100})
			rec.deliver("s", "r", Delivery{Conn: 1, Seq: 105, MsgID: "x", From: "p"})
		}, func(r Result) bool { return r.Phantoms == 1 }},
		{"never subscribed", func(*Recorder, *[]StoredMsg) {}, func(r Result) bool { return r.Anomalies == 1 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := append([]StoredMsg(nil), stored...)
			rec := newTrial(acks)
			c.setup(rec, &st)
			res := Check(rec, st, lastSeqs(st))
			if !c.check(res) {
				t.Fatalf("judged %+v", res)
			}
			if c.name != "told hole" && !res.Failed() {
				t.Fatalf("a broken promise passed: %+v", res)
			}
		})
	}
}

func TestCheckerGoClientLost(t *testing.T) {
	stored, acks := storedRoom(10)
	rec := NewRecorder()
	for _, a := range acks {
		rec.ack(a)
	}
	rec.addSubscriber("g", true, []string{"r"})
	rec.subReply("g", "r", SubReply{Seq: 0})
	for _, s := range []uint64{10, 20, 60, 70, 90, 100} {
		rec.deliver("g", "r", Delivery{Seq: s, MsgID: fmt.Sprintf("m%d", s/10), From: "p"})
	}
	rec.lost("g", "r", "more than 1000 messages missed")
	// One lost event excuses the run 30-50, not the later 80.
	res := Check(rec, stored, lastSeqs(stored))
	if res.ToldHoles != 3 || res.SilentLosses != 1 {
		t.Fatalf("judged %+v", res)
	}
	rec.clientDuplicates("g", 2)
	if res := Check(rec, stored, lastSeqs(stored)); res.Duplicates != 2 {
		t.Fatalf("client-dropped duplicates not counted: %+v", res)
	}
}

func TestSchedule(t *testing.T) {
	kinds := AllFaults()
	got := Schedule(len(kinds)*2, kinds, newRand(1))
	seen := map[FaultKind]int{}
	for _, k := range got[:len(kinds)] {
		seen[k]++
	}
	if len(seen) != len(kinds) {
		t.Fatalf("first round %v does not have every kind once", got[:len(kinds)])
	}
}
