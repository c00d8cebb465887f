package jetstream_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

func TestProvisionIdempotentAndRepublishes(t *testing.T) {
	srv := natstest.StartJetStream(t)
	nc := natstest.Connect(t, srv.URL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	opts := pjs.DefaultStreamOptions()
	if _, err := pjs.Provision(ctx, js, opts); err != nil {
		t.Fatalf("first provision: %v", err)
	}
	opts.MaxAge = time.Hour
	s, err := pjs.Provision(ctx, js, opts)
	if err != nil {
		t.Fatalf("second provision: %v", err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != time.Hour {
		t.Fatalf("update not applied: MaxAge %v", got)
	}

	live, err := nc.SubscribeSync(pjs.LiveSubject(pjs.RoomSubject("lobby")))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		ack, err := js.Publish(ctx, pjs.RoomSubject("lobby"), []byte(`{"data":1}`), jetstream.WithMsgID("m1"))
		if err != nil {
			t.Fatal(err)
		}
		if ack.Sequence != 1 || ack.Duplicate != (i == 1) {
			t.Fatalf("publish %d: seq %d dup %v", i, ack.Sequence, ack.Duplicate)
		}
	}
	if _, err := js.Publish(ctx, pjs.RoomSubject("other"), []byte(`{"data":2}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, pjs.RoomSubject("lobby"), []byte(`{"data":3}`)); err != nil {
		t.Fatal(err)
	}
	want := []struct{ seq, last string }{{"1", "0"}, {"3", "1"}}
	for _, w := range want {
		m, err := live.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("republished message: %v", err)
		}
		if m.Header.Get(pjs.HeaderSequence) != w.seq || m.Header.Get(pjs.HeaderLastSeq) != w.last {
			t.Fatalf("headers %v, want seq %s last %s", m.Header, w.seq, w.last)
		}
		if m.Header.Get(pjs.HeaderSubject) != "chat.room.lobby" {
			t.Fatalf("subject header %q", m.Header.Get(pjs.HeaderSubject))
		}
	}
	if m, err := live.NextMsg(100 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("a duplicate was republished: %v %v", m, err)
	}
}

func TestProvisionRefusesIncompatibleStream(t *testing.T) {
	srv := natstest.StartJetStream(t)
	js := natstest.JetStream(t, srv.URL())
	ctx := t.Context()
	cfg := pjs.ChatStreamConfig(pjs.DefaultStreamOptions())
	cfg.Storage = jetstream.MemoryStorage
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	_, err := pjs.Provision(ctx, js, pjs.DefaultStreamOptions())
	if !errors.Is(err, pjs.ErrIncompatible) {
		t.Fatalf("want ErrIncompatible, got %v", err)
	}
}

func TestProvisionOnCluster(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	js := natstest.JetStream(t, servers[0].URL())
	opts := pjs.DefaultStreamOptions()
	opts.Replicas = 3
	s, err := pjs.Provision(t.Context(), js, opts)
	if err != nil {
		t.Fatal(err)
	}
	if r := s.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("replicas %d", r)
	}
	for i := range 3 {
		if _, err := js.Publish(t.Context(), pjs.RoomSubject("r"+strconv.Itoa(i)), []byte(`{"data":0}`)); err != nil {
			t.Fatal(err)
		}
	}
}
