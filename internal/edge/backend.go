package edge

import (
	"context"
	"errors"
	"time"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// Backend is everything the edge asks of the messaging system under it: the
// one seam between the edge's logic (fan-out, resume, history, the archive
// fallback, publish bookkeeping) and NATS. natsBackend (backend_nats.go) is
// the real one; the tests' in-memory backend lets the recovery logic be
// table-tested without a server, beside the end-to-end tests that run it
// on NATS.
//
// Stream reads are in terms of one stored subject (a topic such as
// chat.room.lobby) and stream sequences; the edge builds every larger read
// (ranges, the newest n, counts) from Fetch, so their logic is the same on
// every backend.
type Backend interface {
	// Subscribe starts delivering the topic's stored messages, in stream
	// order, to deliver. It returns once the subscription is registered, so
	// nothing stored afterwards can be missed (a lost live message shows as
	// a gap in Delivery.LastSeq, which the hub repairs).
	Subscribe(topic string, deliver func(Delivery)) (unsubscribe func(), err error)
	// LastSeq is the sequence of the newest stored message on topic, 0 if
	// none.
	LastSeq(ctx context.Context, topic string) (uint64, error)
	// Fetch returns up to batch (at most batchLimit) of topic's stored
	// messages with seq >= from, in order, and how many more match after
	// the last one returned. A batch may come back shorter than asked
	// (byte limits): only pending says whether there are more. No message
	// at all is errNoMessages.
	Fetch(ctx context.Context, topic string, from uint64, batch int) (ds []Delivery, pending uint64, err error)
	// StreamState is the chat stream's first and last sequence and how many
	// sequences between them are no longer stored.
	StreamState(ctx context.Context) (StreamState, error)
	// Holds reports whether the stream stores every sequence from..to,
	// whatever their subjects.
	Holds(ctx context.Context, from, to uint64) (bool, error)
	// OpenCursor starts reading topic's stored messages after seq after,
	// forwards, for a long replay: flow-controlled, and cleaned up by
	// Close. inactive is how long the backend may keep it without reads.
	OpenCursor(ctx context.Context, topic string, after uint64, inactive time.Duration) (Cursor, error)
	// ArchiveHistory asks the archive's history service (nil error only if
	// one answered without an error).
	ArchiveHistory(ctx context.Context, req pjs.ArchiveHistoryRequest) (*pjs.ArchiveHistoryResponse, error)
	// PresenceQuery asks the presence service who is in a room.
	PresenceQuery(ctx context.Context, q pjs.PresenceQuery) (*pjs.PresenceQueryReply, error)
	// Publish hands a message to the stream without waiting: its outcome
	// reaches the ack handler the backend was built with, under token,
	// exactly once unless it is never answered (the publisher's sweep
	// times it out). dedupID, when set, makes a retry with the same id a
	// duplicate instead of a second message. tc, when set, is the trace the
	// message continues: it is stored with it (NATS headers), so every
	// reader of the stream can continue it too.
	Publish(token uint64, subject, dedupID string, data []byte, tc traceHeaders) error
	// Connected reports whether the backend can take publishes now.
	Connected() bool
}

// StreamState is what the edge needs of the stream's state.
type StreamState struct {
	FirstSeq, LastSeq, NumDeleted uint64
	// Created is when the stream was created: a stream deleted and made
	// again starts its sequences anew, and this is what tells the two apart
	// (the Centrifugo endpoint's epoch).
	Created time.Time
}

// Cursor reads one topic forwards (Backend.OpenCursor).
type Cursor interface {
	// Next returns the next stored message, or errCursorIdle when none
	// came within wait.
	Next(wait time.Duration) (Delivery, error)
	Close()
}

// ackFunc receives the outcome of Backend.Publish: the stored message's
// sequence and whether it was a duplicate, or a protocol error to relay.
type ackFunc func(token, seq uint64, duplicate bool, err error)

var (
	// errNoMessages: nothing matches a Fetch.
	errNoMessages = errors.New("no messages")
	// errCursorIdle: a Cursor had nothing to deliver within its wait.
	errCursorIdle = errors.New("no message within the wait")
)
