// Package jetstream is the single declaration of every JetStream resource the
// mesh uses (the chat stream here, the archive consumer in archive.go, the
// presence bucket in presence.go) and the idempotent code that provisions
// them, beside the NATS wire types of the services built on them (the
// archive's history requests, presence's events and queries), so that the
// edge and the workers share them without importing each other.
//
// The subjects here are the contract backend services code against:
//
//	chat.room.<room>   a message to a room
//	chat.dm.<user>     a direct message to every connection of one user
//	chat.broadcast     a message to every connected client
//
// The chat stream stores them and RePublishes every stored message under
// LivePrefix with its stream sequence in headers. Edges subscribe only to the
// republished subjects, so a duplicate or a rejected publish (which is never
// stored) never reaches a client.
package jetstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ChatStream is the name of the stream over the chat subjects.
const ChatStream = "PARLEY_CHAT"

// Subject roots of the contract.
const (
	ChatSubjects     = "chat.>"
	RoomPrefix       = "chat.room."
	DMPrefix         = "chat.dm."
	BroadcastSubject = "chat.broadcast"
)

// LivePrefix is where the stream republishes what it stored:
// chat.room.lobby is republished as parley.live.chat.room.lobby.
const LivePrefix = "parley.live."

// Headers RePublish adds to every republished message.
const (
	HeaderStream   = "Nats-Stream"
	HeaderSubject  = "Nats-Subject"
	HeaderSequence = "Nats-Sequence"
	HeaderTime     = "Nats-Time-Stamp"
	// HeaderLastSeq is the sequence of the previous stored message with the
	// same subject (0 if none): what lets an edge see a per-room gap.
	HeaderLastSeq = "Nats-Last-Sequence"
)

// RoomSubject is the subject of a room. The name must already be validated.
func RoomSubject(room string) string { return RoomPrefix + room }

// DMSubject is the subject of a user's direct messages.
func DMSubject(user string) string { return DMPrefix + user }

// LiveSubject is the subject the stream republishes subject's messages on.
func LiveSubject(subject string) string { return LivePrefix + subject }

// StreamOptions are the operator's knobs on the chat stream.
type StreamOptions struct {
	// Replicas: 1 in dev, 3 in production clusters.
	Replicas int
	// Duplicates is the dedup window for Nats-Msg-Id.
	Duplicates time.Duration
	// MaxAge, MaxBytes and MaxMsgsPerSubject bound retention; zero means
	// unlimited (MaxAge) or the server default (-1) for the others.
	MaxAge            time.Duration
	MaxBytes          int64
	MaxMsgsPerSubject int64
	// MaxMsgSize bounds one stored message (bytes); zero means unlimited.
	MaxMsgSize int32
}

// DefaultStreamOptions suit a laptop: one replica, a two-minute dedup window,
// a week of history, at most 1 GiB and 100,000 messages per room.
func DefaultStreamOptions() StreamOptions {
	return StreamOptions{
		Replicas:          1,
		Duplicates:        2 * time.Minute,
		MaxAge:            7 * 24 * time.Hour,
		MaxBytes:          1 << 30,
		MaxMsgsPerSubject: 100_000,
	}
}

// ChatStreamConfig declares the chat stream.
func ChatStreamConfig(o StreamOptions) jetstream.StreamConfig {
	orNoLimit := func(v int64) int64 {
		if v <= 0 {
			return -1
		}
		return v
	}
	maxMsgSize := o.MaxMsgSize
	if maxMsgSize <= 0 {
		maxMsgSize = -1
	}
	replicas := o.Replicas
	if replicas < 1 {
		replicas = 1
	}
	return jetstream.StreamConfig{
		Name:              ChatStream,
		Description:       "Parley chat messages (rooms, direct messages, broadcast)",
		Subjects:          []string{ChatSubjects},
		Storage:           jetstream.FileStorage,
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		Replicas:          replicas,
		Duplicates:        o.Duplicates,
		MaxAge:            o.MaxAge,
		MaxBytes:          orNoLimit(o.MaxBytes),
		MaxMsgsPerSubject: orNoLimit(o.MaxMsgsPerSubject),
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		MaxMsgSize:        maxMsgSize,
		// Direct Get lets edges read history and repair gaps from any
		// replica without creating a consumer.
		AllowDirect: true,
		// No single-message deletes ($JS.API.STREAM.MSG.DELETE): with
		// them the stream could remove one of a room's messages from the
		// middle, and an edge could no longer tell that a resume or a
		// history read missed nothing by looking at the room's oldest
		// stored message (it relies on limits and purges removing a
		// subject's messages oldest first); the archive, which has the
		// message anyway, would serve it again. Purges (of a room, with
		// keep or seq) stay allowed. An update can set this on an existing
		// stream, but nothing can clear it afterwards, so an older edge
		// (which declares it false) cannot provision this stream again.
		// Per-message TTLs (AllowMsgTTL) stay off for the same reason.
		DenyDelete: true,
		RePublish: &jetstream.RePublish{
			Source:      ChatSubjects,
			Destination: LivePrefix + ChatSubjects,
		},
	}
}

// ErrIncompatible means a resource exists with a configuration that cannot be
// changed into ours in place (for example another storage type or subjects).
var ErrIncompatible = errors.New("incompatible existing JetStream resource")

// Provision creates the chat stream or updates it to the declared
// configuration. It is idempotent and safe to run from every component at
// start-up. An existing stream whose immutable settings differ is refused
// with ErrIncompatible rather than silently left as it is.
func Provision(ctx context.Context, js jetstream.JetStream, o StreamOptions) (jetstream.Stream, error) {
	want := ChatStreamConfig(o)
	s, err := js.Stream(ctx, want.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = js.CreateStream(ctx, want)
		if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("create stream %s: %w", want.Name, err)
		}
		if err == nil {
			return s, nil
		}
		// Another component created it concurrently: fall through to compare.
		if s, err = js.Stream(ctx, want.Name); err != nil {
			return nil, fmt.Errorf("stream %s: %w", want.Name, err)
		}
	case err != nil:
		return nil, fmt.Errorf("stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if err := compatible(have, want); err != nil {
		return nil, err
	}
	s, err = js.UpdateStream(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("update stream %s: %w", want.Name, err)
	}
	return s, nil
}

func compatible(have, want jetstream.StreamConfig) error {
	bad := func(what string, h, w any) error {
		return fmt.Errorf("%w: stream %s has %s %v, Parley needs %v; remove or migrate it (nats stream rm %s)",
			ErrIncompatible, want.Name, what, h, w, want.Name)
	}
	if have.Storage != want.Storage {
		return bad("storage", have.Storage, want.Storage)
	}
	if have.Retention != want.Retention {
		return bad("retention", have.Retention, want.Retention)
	}
	if !slices.Equal(have.Subjects, want.Subjects) {
		return bad("subjects", have.Subjects, want.Subjects)
	}
	return nil
}
