package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/protocol"
)

// ArchiveConsumer is the durable pull consumer the archivers share: every
// replica fetches from it, so each stored message goes to one of them.
const ArchiveConsumer = "PARLEY_ARCHIVER"

// ArchiveHistorySubject is where the archive's history service answers
// (NATS request/reply, JSON; see docs/archiver.md). It is not a stream
// subject: it lies outside chat.> so requests are never stored.
const ArchiveHistorySubject = "parley.archive.history"

// ArchiveHistoryRequest asks the archive for messages of one room. See
// docs/archiver.md for the contract.
type ArchiveHistoryRequest struct {
	Room string `json:"room"`
	// Before: only messages with seq < Before (0: no bound).
	Before uint64 `json:"before,omitempty"`
	// BeforeTS: only messages stored before this Unix millisecond (0: none).
	BeforeTS int64 `json:"before_ts,omitempty"`
	// After, when present: only messages with seq > After, and the oldest
	// Limit of them (resuming forwards). Absent: the newest Limit.
	After *uint64 `json:"after,omitempty"`
	// Limit: 0 means 50; more than the service's maximum is cut to it.
	Limit int `json:"limit,omitempty"`
}

// ArchiveHistoryResponse is the answer: messages oldest first, each exactly the
// edge's msg push object.
type ArchiveHistoryResponse struct {
	Msgs []json.RawMessage `json:"msgs"`
	// More: further messages match beyond Limit (older ones when paging
	// backwards, newer ones with After).
	More bool `json:"more"`
	// Covered is how far the archive vouches for the reply's stretch of
	// the stream; see ArchiveCoverage. Archivers before it existed sent
	// none (nor anything an edge may trust instead).
	Covered *ArchiveCoverage `json:"covered,omitempty"`
	// Error is set instead of the above on failure.
	Error *protocol.Error `json:"error,omitempty"`
}

// ArchiveCoverage is what the archive can prove about a stretch of the
// stream: it holds every stream sequence s with After < s <= Through, each
// as a committed message or a poison entry. Stream sequences are unique
// across the stream (rooms, direct messages and broadcasts alike) and every
// one of them is a stored message, so holding all of them means no message
// of any room in the stretch is missing from the archive; a sequence it
// never committed (still in flight, or gone from the stream before any
// archiver read it) ends the stretch. The count is the archive's own rows,
// never the consumer's ack floor: JetStream moves the ack floor past
// messages that left the stream before they were acked, or even delivered.
//
// After is where the reply's stretch begins: the request's after when it
// has one; when paging backwards with more, the oldest seq returned (older
// ones are another page); otherwise 0, the stream's beginning, since the
// reply then claims to reach back to the room's first message. Through is
// at most before-1 (before given) and at least After.
type ArchiveCoverage struct {
	After   uint64 `json:"after"`
	Through uint64 `json:"through"`
}

// ArchiveOptions are the knobs of the archive consumer.
type ArchiveOptions struct {
	// AckWait is how long a fetched message may stay unacked before the
	// server hands it to another replica. It bounds how long a crash
	// between fetch and ack delays archiving; it must exceed one batch's
	// write time.
	AckWait time.Duration
	// MaxAckPending bounds the messages fetched but not yet acked across
	// all replicas (batch size × replicas must fit in it).
	MaxAckPending int
	// MaxBatch bounds one fetch request (MaxRequestBatch on the server).
	MaxBatch int
}

// DefaultArchiveOptions allow batches of up to 1,000 messages for up to ten
// replicas with 30 s to write each.
func DefaultArchiveOptions() ArchiveOptions {
	return ArchiveOptions{AckWait: 30 * time.Second, MaxAckPending: 10_000, MaxBatch: 1000}
}

// ArchiveConsumerConfig declares the archive consumer.
func ArchiveConsumerConfig(o ArchiveOptions) jetstream.ConsumerConfig {
	d := DefaultArchiveOptions()
	if o.AckWait <= 0 {
		o.AckWait = d.AckWait
	}
	if o.MaxAckPending <= 0 {
		o.MaxAckPending = d.MaxAckPending
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = d.MaxBatch
	}
	return jetstream.ConsumerConfig{
		Durable:       ArchiveConsumer,
		Description:   "Parley archivers: every chat message into long-term storage",
		FilterSubject: ChatSubjects,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.AckWait,
		MaxAckPending: o.MaxAckPending,
		// Unlimited redeliveries: a message is redelivered only when an
		// archiver could not commit it (store down, crash). Giving up after
		// N tries would silently drop it from the archive during a long
		// store outage. Undecodable (poison) messages never loop here: the
		// archiver records them in its poison table and acks them.
		MaxDeliver:      -1,
		MaxRequestBatch: o.MaxBatch,
		ReplayPolicy:    jetstream.ReplayInstantPolicy,
	}
}

// ProvisionArchive creates the archive consumer on the chat stream or updates
// it to the declared configuration; idempotent, safe from every replica at
// start-up. An existing consumer that cannot become ours in place (a push
// consumer, another ack or deliver policy) is refused with ErrIncompatible.
// The stream must exist: the edge (or `edge provision`) owns its settings.
func ProvisionArchive(ctx context.Context, js jetstream.JetStream, o ArchiveOptions) (jetstream.Consumer, error) {
	want := ArchiveConsumerConfig(o)
	c, err := js.Consumer(ctx, ChatStream, want.Durable)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		c, err = js.CreateConsumer(ctx, ChatStream, want)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, jetstream.ErrConsumerExists) {
			return nil, fmt.Errorf("create consumer %s: %w", want.Durable, err)
		}
		// Another replica created it concurrently: fall through to compare.
		if c, err = js.Consumer(ctx, ChatStream, want.Durable); err != nil {
			return nil, fmt.Errorf("consumer %s: %w", want.Durable, err)
		}
	case err != nil:
		return nil, fmt.Errorf("consumer %s: %w", want.Durable, err)
	}
	if err := compatibleConsumer(c.CachedInfo().Config, want); err != nil {
		return nil, err
	}
	c, err = js.UpdateConsumer(ctx, ChatStream, want)
	if err != nil {
		return nil, fmt.Errorf("update consumer %s: %w", want.Durable, err)
	}
	return c, nil
}

func compatibleConsumer(have, want jetstream.ConsumerConfig) error {
	bad := func(what string, h, w any) error {
		return fmt.Errorf("%w: consumer %s has %s %v, Parley needs %v; remove it (nats consumer rm %s %s)",
			ErrIncompatible, want.Durable, what, h, w, ChatStream, want.Durable)
	}
	if have.DeliverSubject != "" {
		return bad("deliver subject (push consumer)", have.DeliverSubject, "none (pull)")
	}
	if have.AckPolicy != want.AckPolicy {
		return bad("ack policy", have.AckPolicy, want.AckPolicy)
	}
	if have.DeliverPolicy != want.DeliverPolicy {
		return bad("deliver policy", have.DeliverPolicy, want.DeliverPolicy)
	}
	return nil
}
