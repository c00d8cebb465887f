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
