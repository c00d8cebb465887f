package jetstream_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/fnv"
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

// The digest is documented (docs/presence.md) so that anything speaking
// the wire can compute it: FNV-1a 64 over room, 0x00, user, 0x00 and conns
// as 8 bytes big-endian. Check the incremental form against the library's.
func TestPresenceEntryHashIsDocumentedFNV(t *testing.T) {
	for _, c := range []struct {
		room, user string
		conns      int
	}{{"", "alice", 1}, {"lobby", "bob", 3}, {"r", "", 0}, {"lobby", "alice", 1 << 20}} {
		h := fnv.New64a()
		h.Write([]byte(c.room))
		h.Write([]byte{0})
		h.Write([]byte(c.user))
		h.Write([]byte{0})
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(c.conns)))
		if got, want := pjs.PresenceEntryHash(c.room, c.user, c.conns), h.Sum64(); got != want {
			t.Errorf("PresenceEntryHash(%q, %q, %d) = %x, want %x", c.room, c.user, c.conns, got, want)
		}
	}
	d := pjs.PresenceEntryHash("lobby", "bob", 3)
	if back, err := pjs.ParsePresenceDigest(pjs.FormatPresenceDigest(d)); err != nil || back != d {
		t.Fatalf("digest round trip: %x %v, want %x", back, err, d)
	}
	if s := pjs.FormatPresenceDigest(0); s != "0" {
		t.Fatalf("empty digest %q, want \"0\"", s)
	}
}

func TestPresenceRecordValidate(t *testing.T) {
	ok := pjs.PresenceRecord{Room: "lobby", User: "bob", Conns: 2, Edges: map[string]pjs.PresenceEdgeConn{"e1": {Conns: 2}}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid record: %v", err)
	}
	for name, r := range map[string]pjs.PresenceRecord{
		"bad room":         {Room: "a.b", User: "bob", Conns: 1},
		"bad user":         {User: "", Conns: 1},
		"negative conns":   {User: "bob", Conns: -1},
		"bad edge":         {User: "bob", Conns: 1, Edges: map[string]pjs.PresenceEdgeConn{"e*": {Conns: 1}}},
		"edge with none":   {User: "bob", Conns: 1, Edges: map[string]pjs.PresenceEdgeConn{"e1": {}}},
		"edge conns below": {User: "bob", Conns: 1, Edges: map[string]pjs.PresenceEdgeConn{"e1": {Conns: -3}}},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: %+v accepted", name, r)
		}
	}
}

// Marshal gives what json.Marshal gives, byte for byte (the strings here
// hold nothing encoding/json alone would escape).
func TestPresenceEdgeMsgMarshalIsJSONMarshal(t *testing.T) {
	for _, m := range []pjs.PresenceEdgeMsg{
		{},
		{Kind: pjs.PresenceKindHello, Edge: "edge-1", Seq: 0},
		{Kind: pjs.PresenceKindHeartbeat, Edge: "e", Seq: 1 << 63, Entries: 15000, Digest: "00ff"},
		{Kind: "join", Edge: "e", Seq: 7, Room: "lobby", User: "ann \"the\" \\ one\n", Conns: 2, Since: 1767225600000},
		{Kind: "leave", Edge: "e", Seq: 8, User: "bob", Conns: 0},
		{Kind: "snapshot", Edge: "e", Seq: 9, Part: 3, Final: true, Entries: 2, Digest: "ab"},
		{Kind: "snapshot", Edge: "e", Seq: 9, Part: 1, Items: []pjs.PresenceEntry{{Room: "r", User: "u", Conns: 1, Since: 5}}},
		{Kind: "snapshot", Edge: "e", Seq: 9, Part: 1, Items: []pjs.PresenceEntry{}},
	} {
		got, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(m)
		if string(got) != string(want) {
			t.Errorf("Marshal    = %s\njson.Marshal = %s", got, want)
		}
	}
}
