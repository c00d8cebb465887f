// Package presence keeps who is online and in which room across every edge:
// edges publish what changes on their side (wire.go), presence workers fold
// those events into one view (view.go) and keep it in the JetStream KV bucket
// PARLEY_PRESENCE (worker.go), announce joins and leaves once per user, and
// answer presence queries. docs/presence.md describes subjects, payloads and
// the failure handling; this file is the wire format both sides share.
package presence

import (
	"encoding/binary"
	"fmt"
	"strconv"

	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// Subjects. Every token after a prefix is a validated name
// ([A-Za-z0-9_-]{1,128}): an edge id, a room or a user.
const (
	// EdgePrefix: parley.presence.edge.<edge>.<kind> carries an edge's
	// events, heartbeats and snapshots (EdgeMsg), in order.
	EdgePrefix = "parley.presence.edge."
	// EdgeWildcard is what presence workers subscribe to.
	EdgeWildcard = EdgePrefix + "*.*"
	// RoomPrefix: parley.presence.room.<room> carries Announcement join/leave,
	// once per user, published by the writing worker.
	RoomPrefix = "parley.presence.room."
	// UserPrefix: parley.presence.user.<user> carries online/offline.
	UserPrefix = "parley.presence.user."
	// SyncPrefix: parley.presence.sync.<edge> asks one edge for a snapshot.
	SyncPrefix = "parley.presence.sync."
	// QuerySubject takes a Query request; any ready worker answers (queue
	// group QueryQueue).
	QuerySubject = "parley.presence.query"
	QueryQueue   = "parley-presence"
)

// Kinds of EdgeMsg; the kind is also the last subject token.
const (
	KindHello      = "hello"      // the edge started (forget an older incarnation's entries)
	KindConnect    = "connect"    // a connection of User opened; Conns is the user's count on this edge
	KindDisconnect = "disconnect" // a connection of User closed
	KindJoin       = "join"       // a connection of User subscribed to Room; Conns is the count for (Room, User)
	KindLeave      = "leave"      // a connection of User left Room (unsub or disconnect)
	KindHeartbeat  = "hb"         // the edge is alive: Seq, Entries, Digest
	KindSnapshot   = "snapshot"   // the edge's whole state, in Parts, on request
	KindBye        = "bye"        // the edge is shutting down cleanly
)

// Announcement ops (also the client push ops for rooms).
const (
	OpJoin    = protocol.OpJoin
	OpLeave   = protocol.OpLeave
	OpOnline  = "online"
	OpOffline = "offline"
)

// MaxSnapshotPart is how many entries one snapshot message carries.
const MaxSnapshotPart = 1000

// MaxQueryUsers is the most users a presence query returns: the documented
// bound of a presence reply.
const MaxQueryUsers = 1000

// EdgeMsg is everything an edge publishes. Events carry absolute counts, not
// deltas: replaying, duplicating or reordering a snapshot against an event is
// harmless, and a gap is repaired by asking for a snapshot.
type EdgeMsg struct {
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
	Part  int     `json:"part,omitempty"`
	Final bool    `json:"final,omitempty"`
	Items []Entry `json:"items,omitempty"`
}

// Entry is one (room, user) count of an edge; Room "" is the connection
// count (online).
type Entry struct {
	Room  string `json:"room,omitempty"`
	User  string `json:"user"`
	Conns int    `json:"conns"`
	Since int64  `json:"since"`
}

// Validate checks what a worker relies on before a message touches the view.
func (m *EdgeMsg) Validate() error {
	if !protocol.ValidName(m.Edge) {
		return fmt.Errorf("edge %q is not a valid name", m.Edge)
	}
	switch m.Kind {
	case KindConnect, KindDisconnect:
		if m.Room != "" {
			return fmt.Errorf("%s carries no room", m.Kind)
		}
		return checkEntry("", m.User, m.Conns)
	case KindJoin, KindLeave:
		if !protocol.ValidName(m.Room) {
			return fmt.Errorf("room %q is not a valid name", m.Room)
		}
		return checkEntry(m.Room, m.User, m.Conns)
	case KindSnapshot:
		for i := range m.Items {
			it := &m.Items[i]
			if err := checkEntry(it.Room, it.User, it.Conns); err != nil {
				return err
			}
			if it.Conns == 0 {
				return fmt.Errorf("snapshot entry %s/%s has no connections", it.Room, it.User)
			}
		}
		if len(m.Items) > MaxSnapshotPart {
			return fmt.Errorf("snapshot part of %d entries exceeds %d", len(m.Items), MaxSnapshotPart)
		}
	case KindHello, KindHeartbeat, KindBye:
	default:
		return fmt.Errorf("unknown kind %q", m.Kind)
	}
	return nil
}

func checkEntry(room, user string, conns int) error {
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

// Announcement is what the writing worker publishes on RoomPrefix+room
// (join/leave, exactly the client push) and UserPrefix+user (online/offline).
type Announcement struct {
	Op   string `json:"op"`
	Room string `json:"room,omitempty"`
	User string `json:"user"`
}

// Query asks for the users present in Room, at most Limit of them
// (0 or more than MaxQueryUsers means MaxQueryUsers).
type Query struct {
	Room  string `json:"room"`
	Limit int    `json:"limit,omitempty"`
}

// QueryReply lists present users in name order; Total counts them all, so
// Total > len(Users) means the list was cut at the limit.
type QueryReply struct {
	Room  string          `json:"room,omitempty"`
	Users []string        `json:"users"`
	Total int             `json:"total"`
	Error *protocol.Error `json:"error,omitempty"`
}

// Record is the value of a presence key: the user's connections in a room
// (or in total, for user.<user>), per edge, and since when.
type Record struct {
	Room  string              `json:"room,omitempty"`
	User  string              `json:"user"`
	Conns int                 `json:"conns"`
	Since int64               `json:"since"` // Unix ms: the earliest of the edges' since
	Edges map[string]EdgeConn `json:"edges"`
}

// EdgeConn is one edge's share of a Record.
type EdgeConn struct {
	Conns int   `json:"conns"`
	Since int64 `json:"since"`
}

// EdgeSubject is where edge publishes messages of kind.
func EdgeSubject(edge, kind string) string { return EdgePrefix + edge + "." + kind }

// RoomSubject is where a room's joins and leaves are announced.
func RoomSubject(room string) string { return RoomPrefix + room }

// UserSubject is where a user's online/offline is announced.
func UserSubject(user string) string { return UserPrefix + user }

// SyncSubject is where a worker asks edge for a snapshot.
func SyncSubject(edge string) string { return SyncPrefix + edge }

// Key is the bucket key of (room, user); room "" is the online key.
func Key(room, user string) string {
	if room == "" {
		return pjs.PresenceUserKeyPrefix + user
	}
	return pjs.PresenceRoomKeyPrefix + room + "." + user
}

// EntryHash is one entry's part of an edge digest: FNV-1a 64 over
// room, 0x00, user, 0x00 and conns as 8 bytes big-endian. The digest of an
// edge is the XOR of its entries' hashes (entries with conns > 0), so both
// sides keep it up to date in O(1) per change, in any order.
func EntryHash(room, user string, conns int) uint64 {
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

// FormatDigest renders a digest for EdgeMsg.Digest.
func FormatDigest(d uint64) string { return strconv.FormatUint(d, 16) }

// ParseDigest reads EdgeMsg.Digest.
func ParseDigest(s string) (uint64, error) { return strconv.ParseUint(s, 16, 64) }
