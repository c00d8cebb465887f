// Package archive is Parley's long-term message store: the archiver worker
// (a durable JetStream pull consumer that writes every chat message once into
// SQLite or PostgreSQL and acks only after commit) and the history service
// that answers for messages older than the stream keeps.
//
// Files: store.go (the Store seam and what it stores), record.go (a stream
// message → a Record or a Poison), coverage.go (what the archive can prove
// it holds), sqlite.go and postgres.go (the stores),
// archiver.go (the worker), service.go (history over NATS request/reply),
// metrics.go and http.go (operations).
package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Kind is what a chat subject addresses.
type Kind string

// The kinds of chat subjects (jetstream.RoomPrefix, DMPrefix, BroadcastSubject).
const (
	KindRoom      Kind = "room"
	KindDM        Kind = "dm"
	KindBroadcast Kind = "broadcast"
)

// Record is one archived message. Seq, the stream sequence, is its identity:
// writing a Record whose Seq is stored already changes nothing, which makes a
// redelivery after a crash between commit and ack harmless.
type Record struct {
	Seq     uint64
	Subject string
	Kind    Kind
	// Name is the room (KindRoom) or the addressee (KindDM); empty for a
	// broadcast.
	Name  string
	MsgID string
	From  string
	// Time is when the stream stored the message (millisecond precision is
	// what clients see and what is kept).
	Time time.Time
	// Data is the message's JSON value exactly as the edge pushes it.
	Data json.RawMessage
	// Headers are the NATS headers the publisher set (Nats-Msg-Id and any
	// application headers); nil when there were none.
	Headers map[string][]string
}

// Poison is a stream message the archiver cannot turn into a Record (for
// example a subject outside the chat contract). It is recorded, acked and
// skipped so that it never blocks the stream.
type Poison struct {
	Seq     uint64
	Subject string
	Reason  string
	Payload []byte
	Headers map[string][]string
	Time    time.Time
}

// Batch is what one transaction writes.
type Batch struct {
	Records []Record
	Poison  []Poison
}

// Len is the number of stream messages in the batch.
func (b Batch) Len() int { return len(b.Records) + len(b.Poison) }

// HistoryQuery selects messages of one room (or DM addressee). Bounds are
// exclusive; zero means no bound.
type HistoryQuery struct {
	Kind Kind
	Name string
	// Before: seq < Before. BeforeTime: stored before that instant.
	Before     uint64
	BeforeTime time.Time
	// After: seq > *After. When set the oldest Limit matches are returned
	// (resuming forwards); when nil the newest Limit (paging backwards).
	After *uint64
	Limit int
	// Cover, when set, names a stretch of the stream from the rows read:
	// History then also returns, read from the same snapshot as the rows,
	// how far from after on the archive holds every sequence up to upTo
	// (noBound: up to its highest). The same snapshot matters: coverage
	// read after the rows could count a row committed in between that the
	// rows lack.
	Cover func(rows []Record) (after, upTo uint64)
}

// Store is long-term storage. Implementations must be safe for concurrent
// use by several archivers and history requests.
type Store interface {
	// Write stores the batch in one transaction: all of it or nothing.
	// Records and poison entries already stored (same Seq) are skipped;
	// inserted is how many records were new.
	Write(ctx context.Context, b Batch) (inserted int, err error)
	// History returns the messages matching q in seq order, oldest first,
	// at most q.Limit of them, and the coverage q.Cover asks for (nil
	// without it).
	History(ctx context.Context, q HistoryQuery) ([]Record, *Coverage, error)
	// Count is the number of archived messages and of poison entries.
	Count(ctx context.Context) (messages, poison int64, err error)
	// Ping reports whether the store can be reached.
	Ping(ctx context.Context) error
	Close() error
}

// ErrRejected marks a write the store refuses because of the data itself,
// not because it is unavailable: retrying the same batch cannot help, so the
// archiver writes its messages one by one and records the refused ones as
// poison.
var ErrRejected = errors.New("rejected by the store")

// ErrBadConfig is returned by Open for an unusable store configuration.
var ErrBadConfig = errors.New("bad archive store configuration")

// StoreConfig names a store and where it lives.
type StoreConfig struct {
	// Kind is "sqlite" (default) or "postgres".
	Kind string
	// SQLitePath is the database file of the SQLite store.
	SQLitePath string
	// PostgresDSN is a libpq URL or keyword/value string.
	PostgresDSN string
}

// Open opens (and migrates) the configured store.
func Open(ctx context.Context, c StoreConfig) (Store, error) {
	switch c.Kind {
	case "", "sqlite":
		if c.SQLitePath == "" {
			return nil, fmt.Errorf("%w: the sqlite store needs a path (--sqlite-path)", ErrBadConfig)
		}
		return OpenSQLite(ctx, c.SQLitePath)
	case "postgres":
		if c.PostgresDSN == "" {
			return nil, fmt.Errorf("%w: the postgres store needs a DSN (--postgres-dsn)", ErrBadConfig)
		}
		return OpenPostgres(ctx, c.PostgresDSN)
	}
	return nil, fmt.Errorf("%w: store must be sqlite or postgres, not %q", ErrBadConfig, c.Kind)
}

// encodeHeaders is the stored form of a record's headers: a JSON object, or
// "" for none.
func encodeHeaders(h map[string][]string) (string, error) {
	if len(h) == 0 {
		return "", nil
	}
	b, err := json.Marshal(h)
	if err != nil {
		return "", fmt.Errorf("encode headers: %w", err)
	}
	return string(b), nil
}

func decodeHeaders(s string) (map[string][]string, error) {
	if s == "" {
		return nil, nil
	}
	var h map[string][]string
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return nil, fmt.Errorf("decode stored headers: %w", err)
	}
	return h, nil
}

// reverse puts rows read newest first into oldest-first order.
func reverse(rs []Record) {
	for i, j := 0, len(rs)-1; i < j; i, j = i+1, j-1 {
		rs[i], rs[j] = rs[j], rs[i]
	}
}
