package jetstream_test

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

func TestProvisionPresenceIdempotentAndRefusesIncompatible(t *testing.T) {
	srv := natstest.StartJetStream(t)
	js := natstest.JetStream(t, srv.URL())
	ctx := t.Context()
	kv, err := pjs.ProvisionPresence(ctx, js, pjs.DefaultPresenceOptions())
	if err != nil {
		t.Fatalf("first provision: %v", err)
	}
	rev, err := kv.Put(ctx, "user.alice", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	kv, err = pjs.ProvisionPresence(ctx, js, pjs.DefaultPresenceOptions())
	if err != nil {
		t.Fatalf("second provision: %v", err)
	}
	if e, err := kv.Get(ctx, "user.alice"); err != nil || e.Revision() != rev {
		t.Fatalf("re-provisioning lost data: %v %v", e, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 || st.LimitMarkerTTL() != pjs.PresenceMarkerTTL {
		t.Fatalf("bucket status history %d marker ttl %v", st.History(), st.LimitMarkerTTL())
	}

	// Another server: a memory-storage bucket of that name is refused.
	other := natstest.JetStream(t, natstest.StartJetStream(t).URL())
	cfg := pjs.PresenceBucketConfig(pjs.DefaultPresenceOptions())
	cfg.Storage = jetstream.MemoryStorage
	if _, err := other.CreateKeyValue(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := pjs.ProvisionPresence(ctx, other, pjs.DefaultPresenceOptions()); !errors.Is(err, pjs.ErrIncompatible) {
		t.Fatalf("incompatible bucket: got %v", err)
	}
}
