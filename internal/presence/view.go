package presence

import (
	"slices"
	"time"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// view is one worker's picture of presence: every (room, user) with its
// connections per edge, and what the worker knows about each edge. It is
// a deterministic fold of the edges' messages, so every replica that sees
// the same messages holds the same view; only the writer turns it into KV
// writes (worker.go). A view is owned by one goroutine: no locks.
type view struct {
	rooms map[string]*roomUsers // room "" holds the online (connection) entries
	edges map[string]*edgeState
	// changed is called after an entry's shares changed.
	changed func(e *entry)
	// present counts entries with at least one connection.
	present int
}

type roomUsers struct {
	name  string // shared by the room's entries instead of a copy each
	users map[string]*entry
}

// entry is one (room, user).
type entry struct {
	room, user string
	shares     []edgeShare // one per edge the user is on; usually one
	total      int

	// Writer bookkeeping (worker.go): what the bucket holds for this key.
	rev      uint64 // last revision written or read (0: never in the bucket)
	inKV     bool   // the bucket holds a value (not a marker) for the key
	written  uint64 // hash of the value last written or read
	inflight bool   // a write is awaiting its ack
	queued   bool   // in the writer's queue
	again    bool   // changed while a write was in flight
}

type edgeShare struct {
	edge  string
	conns int
	since int64
}

// edgeState is what a worker knows about one edge.
type edgeState struct {
	id       string
	seq      uint64
	seqKnown bool // seq comes from the edge (not just a bucket load)
	lastSeen time.Time
	entries  int    // entries with conns > 0
	digest   uint64 // XOR of pjs.PresenceEntryHash over those entries

	snap     []pjs.PresenceEntry // snapshot parts being collected
	snapNext int                 // the part expected next; -1 when not collecting
	asked    time.Time
}

func newView(changed func(*entry)) *view {
	return &view{rooms: make(map[string]*roomUsers), edges: make(map[string]*edgeState), changed: changed}
}

// edge returns the state of edge id, creating it as seen at now.
func (v *view) edge(id string, now time.Time) *edgeState {
	es := v.edges[id]
	if es == nil {
		es = &edgeState{id: id, lastSeen: now, snapNext: -1}
		v.edges[id] = es
	}
	return es
}

func (v *view) lookup(room, user string) *entry {
	if ru := v.rooms[room]; ru != nil {
		return ru.users[user]
	}
	return nil
}

// entry returns (room, user), creating an empty entry.
func (v *view) entry(room, user string) *entry {
	ru := v.rooms[room]
	if ru == nil {
		ru = &roomUsers{name: room, users: make(map[string]*entry)}
		v.rooms[room] = ru
	}
	e := ru.users[user]
	if e == nil {
		e = &entry{room: ru.name, user: user}
		ru.users[user] = e
	}
	return e
}

// remove forgets an entry (with no connections and nothing in the bucket).
func (v *view) remove(e *entry) {
	ru := v.rooms[e.room]
	if ru == nil || ru.users[e.user] != e {
		return
	}
	delete(ru.users, e.user)
	if len(ru.users) == 0 {
		delete(v.rooms, e.room)
	}
}

// set makes edge es hold conns connections of user in room.
func (v *view) set(es *edgeState, room, user string, conns int, since int64) {
	e := v.lookup(room, user)
	if e == nil {
		if conns == 0 {
			return
		}
		e = v.entry(room, user)
	}
	if !v.setShare(es, e, conns, since) {
		return
	}
	v.changed(e)
}

// setShare changes one share and the edge's digest; it reports a change.
func (v *view) setShare(es *edgeState, e *entry, conns int, since int64) bool {
	i := slices.IndexFunc(e.shares, func(s edgeShare) bool { return s.edge == es.id })
	old := 0
	if i >= 0 {
		old = e.shares[i].conns
	}
	if old == conns {
		if i >= 0 && since != 0 && e.shares[i].since != since {
			e.shares[i].since = since
			return true
		}
		return false
	}
	if old > 0 {
		es.digest ^= pjs.PresenceEntryHash(e.room, e.user, old)
		es.entries--
	}
	if conns > 0 {
		es.digest ^= pjs.PresenceEntryHash(e.room, e.user, conns)
		es.entries++
	}
	wasPresent := e.total > 0
	e.total += conns - old
	switch {
	case conns == 0:
		e.shares = slices.Delete(e.shares, i, i+1)
	case i < 0:
		e.shares = append(e.shares, edgeShare{edge: es.id, conns: conns, since: since})
	default:
		e.shares[i].conns = conns
		if since != 0 {
			e.shares[i].since = since
		}
	}
	if isPresent := e.total > 0; isPresent != wasPresent {
		if isPresent {
			v.present++
		} else {
			v.present--
		}
	}
	return true
}

// dropEdge removes every share of edge id (it died or said bye) and forgets
// the edge.
func (v *view) dropEdge(id string) {
	es := v.edges[id]
	if es == nil {
		return
	}
	v.clearEdge(es, nil)
	delete(v.edges, id)
}

// clearEdge sets every share of es not in keep to zero.
func (v *view) clearEdge(es *edgeState, keep map[[2]string]struct{}) {
	if es.entries == 0 {
		return
	}
	var hit []*entry
	for _, ru := range v.rooms {
		for _, e := range ru.users {
			if _, ok := keep[[2]string{e.room, e.user}]; ok {
				continue
			}
			if slices.ContainsFunc(e.shares, func(s edgeShare) bool { return s.edge == es.id }) {
				hit = append(hit, e)
			}
		}
	}
	for _, e := range hit {
		if v.setShare(es, e, 0, 0) {
			v.changed(e)
		}
	}
}

// applySnapshot makes the view agree with an edge's complete state.
func (v *view) applySnapshot(es *edgeState, items []pjs.PresenceEntry) {
	keep := make(map[[2]string]struct{}, len(items))
	for _, it := range items {
		keep[[2]string{it.Room, it.User}] = struct{}{}
	}
	v.clearEdge(es, keep)
	for _, it := range items {
		v.set(es, it.Room, it.User, it.Conns, it.Since)
	}
}

// users lists up to limit users present in room, in name order, and how
// many are present in all.
func (v *view) users(room string, limit int) ([]string, int) {
	ru := v.rooms[room]
	if ru == nil {
		return []string{}, 0
	}
	all := make([]string, 0, len(ru.users))
	for u, e := range ru.users {
		if e.total > 0 {
			all = append(all, u)
		}
	}
	slices.Sort(all)
	if len(all) > limit {
		return slices.Clip(all[:limit]), len(all)
	}
	return all, len(all)
}

// record is the bucket value of e.
func (e *entry) record() pjs.PresenceRecord {
	r := pjs.PresenceRecord{Room: e.room, User: e.user, Conns: e.total, Edges: make(map[string]pjs.PresenceEdgeConn, len(e.shares))}
	for _, s := range e.shares {
		if r.Since == 0 || (s.since != 0 && s.since < r.Since) {
			r.Since = s.since
		}
		r.Edges[s.edge] = pjs.PresenceEdgeConn{Conns: s.conns, Since: s.since}
	}
	return r
}
