package jetstream_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

func TestProvisionArchiveIdempotent(t *testing.T) {
	srv := natstest.StartJetStream(t)
	js := natstest.JetStream(t, srv.URL())
	ctx := t.Context()
	if _, err := pjs.ProvisionArchive(ctx, js, pjs.DefaultArchiveOptions()); err == nil {
		t.Fatal("provisioned the archive consumer without the chat stream")
	}
	if _, err := pjs.Provision(ctx, js, pjs.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	c, err := pjs.ProvisionArchive(ctx, js, pjs.DefaultArchiveOptions())
	if err != nil {
		t.Fatalf("first provision: %v", err)
	}
	cfg := c.CachedInfo().Config
	if cfg.Durable != pjs.ArchiveConsumer || cfg.AckPolicy != jetstream.AckExplicitPolicy ||
		cfg.FilterSubject != pjs.ChatSubjects || cfg.MaxDeliver != -1 || cfg.MaxAckPending != 10_000 {
		t.Fatalf("consumer config %+v", cfg)
	}
	o := pjs.DefaultArchiveOptions()
	o.AckWait, o.MaxAckPending = 5*time.Second, 500
	c, err = pjs.ProvisionArchive(ctx, js, o)
	if err != nil {
		t.Fatalf("second provision: %v", err)
	}
	if cfg := c.CachedInfo().Config; cfg.AckWait != 5*time.Second || cfg.MaxAckPending != 500 {
		t.Fatalf("update not applied: %+v", cfg)
	}
	// The consumer sees every stored chat message, and only those.
	for _, subj := range []string{"chat.room.a", "chat.dm.bob", "chat.broadcast"} {
		if _, err := js.Publish(ctx, subj, []byte(`{"data":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	natstest.Eventually(t, 5*time.Second, func() error {
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 3 {
			return errors.New("pending is not 3 yet")
		}
		return nil
	})
}

func TestProvisionArchiveRefusesIncompatibleConsumer(t *testing.T) {
	srv := natstest.StartJetStream(t)
	js := natstest.JetStream(t, srv.URL())
	ctx := t.Context()
	if _, err := pjs.Provision(ctx, js, pjs.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	cfg := pjs.ArchiveConsumerConfig(pjs.DefaultArchiveOptions())
	cfg.AckPolicy = jetstream.AckAllPolicy
	if _, err := js.CreateConsumer(ctx, pjs.ChatStream, cfg); err != nil {
		t.Fatal(err)
	}
	_, err := pjs.ProvisionArchive(ctx, js, pjs.DefaultArchiveOptions())
	if !errors.Is(err, pjs.ErrIncompatible) {
		t.Fatalf("want ErrIncompatible, got %v", err)
	}
}

// The chat stream refuses single-message deletes, including a stream made
// before Parley declared it: edges and the archive rely on a room's
// messages leaving the stream oldest first only (limits, purges), which a
// delete from the middle of a room would break without anyone noticing.
func TestChatStreamDeniesDeletes(t *testing.T) {
	srv := natstest.StartJetStream(t)
	js := natstest.JetStream(t, srv.URL())
	ctx := t.Context()
	old := pjs.ChatStreamConfig(pjs.DefaultStreamOptions())
	old.DenyDelete = false // as provisioned by earlier versions
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(ctx, pjs.RoomSubject("lobby"), []byte(`{"data":1}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := pjs.Provision(ctx, js, pjs.DefaultStreamOptions())
	if err != nil {
		t.Fatalf("provision over a stream without deny_delete: %v", err)
	}
	if !s.CachedInfo().Config.DenyDelete {
		t.Fatal("provision did not set deny_delete")
	}
	if err := s.DeleteMsg(ctx, ack.Sequence); err == nil {
		t.Fatal("a message was deleted from the chat stream")
	}
	if _, err := s.GetMsg(ctx, ack.Sequence); err != nil {
		t.Fatalf("the message is gone: %v", err)
	}
	// Purges, which remove a subject's oldest first, still work.
	if err := s.Purge(ctx, jetstream.WithPurgeSubject(pjs.RoomSubject("lobby"))); err != nil {
		t.Fatalf("purge: %v", err)
	}
}
