package jetstream

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/protocol"
)

// PresenceBucket is the KV bucket the presence workers keep who is where in.
// Keys (names are validated [A-Za-z0-9_-] tokens, so a key never holds a
// stray '.', '*' or '>'):
//
//	room.<room>.<user>   the user is subscribed to the room on ≥1 connection
//	user.<user>          the user has ≥1 connection (online)
//	writer               the lease of the replica allowed to write the bucket
//
// A present key's value is a PresenceRecord (JSON); an absent user has no
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

// The presence wire format, shared by the edges (which publish what changes
// on their side) and the presence workers (which fold it into the bucket and
// answer queries). It lives here, beside the bucket it describes, so an edge
// can speak it without importing the worker (internal/presence).
// docs/presence.md describes the subjects, payloads and failure handling.

// Subjects. Every token after a prefix is a validated name
// ([A-Za-z0-9_-]{1,128}): an edge id, a room or a user.
const (
	// PresenceEdgePrefix: parley.presence.edge.<edge>.<kind> carries an edge's
	// events, heartbeats and snapshots (PresenceEdgeMsg), in order.
	PresenceEdgePrefix = "parley.presence.edge."
	// PresenceEdgeWildcard is what presence workers subscribe to.
	PresenceEdgeWildcard = PresenceEdgePrefix + "*.*"
	// PresenceRoomPrefix: parley.presence.room.<room> carries PresenceAnnouncement join/leave,
	// once per user, published by the writing worker.
	PresenceRoomPrefix = "parley.presence.room."
	// PresenceUserPrefix: parley.presence.user.<user> carries online/offline.
	PresenceUserPrefix = "parley.presence.user."
	// PresenceSyncPrefix: parley.presence.sync.<edge> asks one edge for a snapshot.
	PresenceSyncPrefix = "parley.presence.sync."
	// PresenceQuerySubject takes a PresenceQuery request; any ready worker answers (queue
	// group PresenceQueryQueue).
	PresenceQuerySubject = "parley.presence.query"
	PresenceQueryQueue   = "parley-presence"
)

// Kinds of PresenceEdgeMsg; the kind is also the last subject token.
const (
	PresenceKindHello      = "hello"      // the edge started (forget an older incarnation's entries)
	PresenceKindConnect    = "connect"    // a connection of User opened; Conns is the user's count on this edge
	PresenceKindDisconnect = "disconnect" // a connection of User closed
	PresenceKindJoin       = "join"       // a connection of User subscribed to Room; Conns is the count for (Room, User)
	PresenceKindLeave      = "leave"      // a connection of User left Room (unsub or disconnect)
	PresenceKindHeartbeat  = "hb"         // the edge is alive: Seq, Entries, Digest
	PresenceKindSnapshot   = "snapshot"   // the edge's whole state, in Parts, on request
	PresenceKindBye        = "bye"        // the edge is shutting down cleanly
)

// PresenceAnnouncement ops (also the client push ops for rooms).
const (
	PresenceOpJoin    = protocol.OpJoin
	PresenceOpLeave   = protocol.OpLeave
	PresenceOpOnline  = "online"
	PresenceOpOffline = "offline"
)

// PresenceMaxSnapshotPart is how many entries one snapshot message carries.
const PresenceMaxSnapshotPart = 1000

// PresenceMaxQueryUsers is the most users a presence query returns: the documented
// bound of a presence reply.
const PresenceMaxQueryUsers = 1000

// PresenceEdgeMsg is everything an edge publishes. Events carry absolute counts, not
// deltas: replaying, duplicating or reordering a snapshot against an event is
// harmless, and a gap is repaired by asking for a snapshot.
type PresenceEdgeMsg struct {
	Kind string `json:"kind"`
	Edge string `json:"edge"`
	// Seq numbers the edge's events (connect … leave) from 1; heartbeats
	// and snapshots carry the Seq of the last event before them.
	Seq uint64 `json:"seq"`
	// Events.
	Room  string `json:"room,omitempty"`
	User  string `json:"user,omitempty"`
	Conns int    `json:"conns,omitempty"`
	Since int64  `json:"since,omitempty"` // Unix ms the count went from 0 to ≥1 on this edge
	// Heartbeats (and the last snapshot part).
	Entries int    `json:"entries,omitempty"`
	Digest  string `json:"digest,omitempty"`
	// Snapshots.
	Part  int             `json:"part,omitempty"`
	Final bool            `json:"final,omitempty"`
	Items []PresenceEntry `json:"items,omitempty"`
}

// PresenceEntry is one (room, user) count of an edge; Room "" is the connection
// count (online).
type PresenceEntry struct {
	Room  string `json:"room,omitempty"`
	User  string `json:"user"`
	Conns int    `json:"conns"`
	Since int64  `json:"since"`
}

// Validate checks what a worker relies on before a message touches the view.
func (m *PresenceEdgeMsg) Validate() error {
	if !protocol.ValidName(m.Edge) {
		return fmt.Errorf("edge %q is not a valid name", m.Edge)
	}
	switch m.Kind {
	case PresenceKindConnect, PresenceKindDisconnect:
		if m.Room != "" {
			return fmt.Errorf("%s carries no room", m.Kind)
		}
		return checkPresenceEntry("", m.User, m.Conns)
	case PresenceKindJoin, PresenceKindLeave:
		if !protocol.ValidName(m.Room) {
			return fmt.Errorf("room %q is not a valid name", m.Room)
		}
		return checkPresenceEntry(m.Room, m.User, m.Conns)
	case PresenceKindSnapshot:
		for i := range m.Items {
			it := &m.Items[i]
			if err := checkPresenceEntry(it.Room, it.User, it.Conns); err != nil {
				return err
			}
			if it.Conns == 0 {
				return fmt.Errorf("snapshot entry %s/%s has no connections", it.Room, it.User)
			}
		}
		if len(m.Items) > PresenceMaxSnapshotPart {
			return fmt.Errorf("snapshot part of %d entries exceeds %d", len(m.Items), PresenceMaxSnapshotPart)
		}
	case PresenceKindHello, PresenceKindHeartbeat, PresenceKindBye:
	default:
		return fmt.Errorf("unknown kind %q", m.Kind)
	}
	return nil
}

func checkPresenceEntry(room, user string, conns int) error {
	if room != "" && !protocol.ValidName(room) {
		return fmt.Errorf("room %q is not a valid name", room)
	}
	if !protocol.ValidName(user) {
		return fmt.Errorf("user %q is not a valid name", user)
	}
	if conns < 0 || conns > 1<<20 {
		return fmt.Errorf("conns %d out of range", conns)
	}
	return nil
}

// PresenceAnnouncement is what the writing worker publishes on PresenceRoomPrefix+room
// (join/leave, exactly the client push) and PresenceUserPrefix+user (online/offline).
type PresenceAnnouncement struct {
	Op   string `json:"op"`
	Room string `json:"room,omitempty"`
	User string `json:"user"`
}

// PresenceQuery asks for the users present in Room, at most Limit of them
// (0 or more than PresenceMaxQueryUsers means PresenceMaxQueryUsers).
type PresenceQuery struct {
	Room  string `json:"room"`
	Limit int    `json:"limit,omitempty"`
}

// PresenceQueryReply lists present users in name order; Total counts them all, so
// Total > len(Users) means the list was cut at the limit.
type PresenceQueryReply struct {
	Room  string          `json:"room,omitempty"`
	Users []string        `json:"users"`
	Total int             `json:"total"`
	Error *protocol.Error `json:"error,omitempty"`
}

// PresenceRecord is the value of a presence key: the user's connections in a room
// (or in total, for user.<user>), per edge, and since when.
type PresenceRecord struct {
	Room  string                      `json:"room,omitempty"`
	User  string                      `json:"user"`
	Conns int                         `json:"conns"`
	Since int64                       `json:"since"` // Unix ms: the earliest of the edges' since
	Edges map[string]PresenceEdgeConn `json:"edges"`
}

// Validate checks what a worker relies on before a record read back from
// the bucket enters its view: a record is only ever written for a present
// user, so every edge share it lists holds a connection.
func (r *PresenceRecord) Validate() error {
	if err := checkPresenceEntry(r.Room, r.User, r.Conns); err != nil {
		return err
	}
	for edge, ec := range r.Edges {
		if !protocol.ValidName(edge) {
			return fmt.Errorf("edge %q is not a valid name", edge)
		}
		if ec.Conns <= 0 {
			return fmt.Errorf("edge %s has no connections", edge)
		}
	}
	return nil
}

// PresenceEdgeConn is one edge's share of a PresenceRecord.
type PresenceEdgeConn struct {
	Conns int   `json:"conns"`
	Since int64 `json:"since"`
}

// PresenceEdgeSubject is where edge publishes messages of kind.
func PresenceEdgeSubject(edge, kind string) string { return PresenceEdgePrefix + edge + "." + kind }

// PresenceRoomSubject is where a room's joins and leaves are announced.
func PresenceRoomSubject(room string) string { return PresenceRoomPrefix + room }

// PresenceUserSubject is where a user's online/offline is announced.
func PresenceUserSubject(user string) string { return PresenceUserPrefix + user }

// PresenceSyncSubject is where a worker asks edge for a snapshot.
func PresenceSyncSubject(edge string) string { return PresenceSyncPrefix + edge }

// PresenceKey is the bucket key of (room, user); room "" is the online key.
func PresenceKey(room, user string) string {
	if room == "" {
		return PresenceUserKeyPrefix + user
	}
	return PresenceRoomKeyPrefix + room + "." + user
}

// PresenceEntryHash is one entry's part of an edge digest: FNV-1a 64 over
// room, 0x00, user, 0x00 and conns as 8 bytes big-endian. The digest of an
// edge is the XOR of its entries' hashes (entries with conns > 0), so both
// sides keep it up to date in O(1) per change, in any order.
func PresenceEntryHash(room, user string, conns int) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(room); i++ {
		h = (h ^ uint64(room[i])) * prime
	}
	h *= prime // the 0x00 separator
	for i := 0; i < len(user); i++ {
		h = (h ^ uint64(user[i])) * prime
	}
	h *= prime
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(conns))
	for _, c := range b {
		h = (h ^ uint64(c)) * prime
	}
	return h
}

// FormatPresenceDigest renders a digest for PresenceEdgeMsg.Digest.
func FormatPresenceDigest(d uint64) string { return strconv.FormatUint(d, 16) }

// ParsePresenceDigest reads PresenceEdgeMsg.Digest.
func ParsePresenceDigest(s string) (uint64, error) { return strconv.ParseUint(s, 16, 64) }

// Marshal encodes m as json.Marshal does (the same keys in the same order,
// the same fields omitted), without reflection for an event or a heartbeat:
// an edge sends one per connection and per join, and encoding/json was a
// twentieth of a connect storm's CPU. A snapshot part (Items) goes through
// encoding/json.
func (m *PresenceEdgeMsg) Marshal() ([]byte, error) {
	if m.Items != nil {
		return json.Marshal(m)
	}
	b := make([]byte, 0, 96+len(m.Edge)+len(m.Room)+len(m.User)+len(m.Digest))
	b = append(b, `{"kind":`...)
	b = protocol.AppendString(b, m.Kind)
	b = append(b, `,"edge":`...)
	b = protocol.AppendString(b, m.Edge)
	b = strconv.AppendUint(append(b, `,"seq":`...), m.Seq, 10)
	if m.Room != "" {
		b = protocol.AppendString(append(b, `,"room":`...), m.Room)
	}
	if m.User != "" {
		b = protocol.AppendString(append(b, `,"user":`...), m.User)
	}
	if m.Conns != 0 {
		b = strconv.AppendInt(append(b, `,"conns":`...), int64(m.Conns), 10)
	}
	if m.Since != 0 {
		b = strconv.AppendInt(append(b, `,"since":`...), m.Since, 10)
	}
	if m.Entries != 0 {
		b = strconv.AppendInt(append(b, `,"entries":`...), int64(m.Entries), 10)
	}
	if m.Digest != "" {
		b = protocol.AppendString(append(b, `,"digest":`...), m.Digest)
	}
	if m.Part != 0 {
		b = strconv.AppendInt(append(b, `,"part":`...), int64(m.Part), 10)
	}
	if m.Final {
		b = append(b, `,"final":true`...)
	}
	return append(b, '}'), nil
}
