package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PresenceBucket is the KV bucket the presence workers keep who is where in.
// Keys (names are validated [A-Za-z0-9_-] tokens, so a key never holds a
// stray '.', '*' or '>'):
//
//	room.<room>.<user>   the user is subscribed to the room on ≥1 connection
//	user.<user>          the user has ≥1 connection (online)
//	writer               the lease of the replica allowed to write the bucket
//
// A present key's value is a presence.Record (JSON); an absent user has no
// key (its last write is a purge marker that expires after PresenceMarkerTTL).
const PresenceBucket = "PARLEY_PRESENCE"

// PresenceMarkerTTL is how long the purge marker of a user who left stays in
// the bucket: long enough for watchers to see the purge, short enough that
// every (room, user) pair ever seen does not accumulate a marker forever.
const PresenceMarkerTTL = 15 * time.Minute

// PresenceOptions are the operator's knobs on the presence bucket.
type PresenceOptions struct {
	// Replicas: 1 in dev, 3 in production clusters.
	Replicas int
}

// DefaultPresenceOptions suit a laptop.
func DefaultPresenceOptions() PresenceOptions { return PresenceOptions{Replicas: 1} }

// PresenceBucketConfig declares the presence bucket.
func PresenceBucketConfig(o PresenceOptions) jetstream.KeyValueConfig {
	replicas := o.Replicas
	if replicas < 1 {
		replicas = 1
	}
	return jetstream.KeyValueConfig{
		Bucket:      PresenceBucket,
		Description: "Parley presence: who is online and in which room (written by cmd/presence)",
		// Only the current state matters; history would only cost space.
		History: 1,
		// A record lists the edges a user is on; 64 KiB is thousands of edges.
		MaxValueSize: 64 << 10,
		// File storage: a NATS restart keeps the view, so workers and edges
		// agree at once (digests match) instead of re-announcing everything.
		Storage:  jetstream.FileStorage,
		Replicas: replicas,
		// Enables per-message TTL, which the workers put on purge markers.
		LimitMarkerTTL: PresenceMarkerTTL,
	}
}

// PresenceKeyPrefixes of the bucket's keys.
const (
	PresenceRoomKeyPrefix = "room."
	PresenceUserKeyPrefix = "user."
	PresenceWriterKey     = "writer"
)

// ProvisionPresence creates the presence bucket or updates it to the declared
// configuration. Like Provision it is idempotent, survives a concurrent
// creation by another component, and refuses an existing bucket whose
// storage type differs with ErrIncompatible.
func ProvisionPresence(ctx context.Context, js jetstream.JetStream, o PresenceOptions) (jetstream.KeyValue, error) {
	want := PresenceBucketConfig(o)
	kv, err := js.KeyValue(ctx, want.Bucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		kv, err = js.CreateKeyValue(ctx, want)
		if err == nil {
			return kv, nil
		}
		if !errors.Is(err, jetstream.ErrBucketExists) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("create kv bucket %s: %w", want.Bucket, err)
		}
		// Created concurrently by another replica: compare and update.
		if kv, err = js.KeyValue(ctx, want.Bucket); err != nil {
			return nil, fmt.Errorf("kv bucket %s: %w", want.Bucket, err)
		}
	case err != nil:
		return nil, fmt.Errorf("kv bucket %s: %w", want.Bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("kv bucket %s status: %w", want.Bucket, err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		if have := bs.StreamInfo().Config.Storage; have != want.Storage {
			return nil, fmt.Errorf("%w: kv bucket %s has storage %v, Parley needs %v; remove it (nats kv rm %s)",
				ErrIncompatible, want.Bucket, have, want.Storage, want.Bucket)
		}
	}
	kv, err = js.UpdateKeyValue(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("update kv bucket %s: %w", want.Bucket, err)
	}
	return kv, nil
}
