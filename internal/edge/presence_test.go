package edge_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

func nextPresence(t *testing.T, sub *nats.Subscription, kind string) pjs.PresenceEdgeMsg {
	t.Helper()
	for {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("waiting for %s: %v", kind, err)
		}
		var em pjs.PresenceEdgeMsg
		if err := json.Unmarshal(m.Data, &em); err != nil {
			t.Fatal(err)
		}
		if err := em.Validate(); err != nil || m.Subject != pjs.PresenceEdgeSubject(em.Edge, em.Kind) {
			t.Fatalf("invalid presence message on %s: %s (%v)", m.Subject, m.Data, err)
		}
		if em.Kind == kind {
			return em
		}
		if em.Kind != pjs.PresenceKindHeartbeat {
			t.Fatalf("got %s, want %s", m.Data, kind)
		}
	}
}

// The edge's side of the presence contract, seen from NATS: absolute
// counts with consecutive sequence numbers, a heartbeat whose digest is the
// XOR of the entries, a snapshot on request.
func TestPresenceEdgeEventsAndDigest(t *testing.T) {
	srv := natstest.StartJetStream(t)
	nc := natstest.Connect(t, srv.URL())
	sub, err := nc.SubscribeSync(pjs.PresenceEdgePrefix + "e1.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.Presence = edge.PresenceConfig{EdgeID: "e1", Heartbeat: 20 * time.Millisecond}
	})
	nextPresence(t, sub, pjs.PresenceKindHello)
	a1, a2 := edgetest.Dial(t, e, "alice"), edgetest.Dial(t, e, "alice")
	if m := nextPresence(t, sub, pjs.PresenceKindConnect); m.Seq != 1 || m.Conns != 1 || m.User != "alice" || m.Since == 0 {
		t.Fatalf("first connect %+v", m)
	}
	if m := nextPresence(t, sub, pjs.PresenceKindConnect); m.Seq != 2 || m.Conns != 2 {
		t.Fatalf("second connect %+v", m)
	}
	subscribe(t, a1, "lobby")
	if m := nextPresence(t, sub, pjs.PresenceKindJoin); m.Seq != 3 || m.Room != "lobby" || m.Conns != 1 {
		t.Fatalf("join %+v", m)
	}
	want := pjs.PresenceEntryHash("", "alice", 2) ^ pjs.PresenceEntryHash("lobby", "alice", 1)
	if m := nextPresence(t, sub, pjs.PresenceKindHeartbeat); m.Seq != 3 || m.Entries != 2 || m.Digest != pjs.FormatPresenceDigest(want) {
		t.Fatalf("heartbeat %+v, want digest %s", m, pjs.FormatPresenceDigest(want))
	}
	if err := nc.Publish(pjs.PresenceSyncSubject("e1"), []byte(`{"reason":"test"}`)); err != nil {
		t.Fatal(err)
	}
	snap := nextPresence(t, sub, pjs.PresenceKindSnapshot)
	if !snap.Final || snap.Part != 0 || snap.Seq != 3 || len(snap.Items) != 2 || snap.Digest != pjs.FormatPresenceDigest(want) {
		t.Fatalf("snapshot %+v", snap)
	}
	a2.Close()
	if m := nextPresence(t, sub, pjs.PresenceKindDisconnect); m.Seq != 4 || m.Conns != 1 {
		t.Fatalf("disconnect %+v", m)
	}
	if err := a1.Unsubscribe(ctxT(t), "lobby"); err != nil {
		t.Fatal(err)
	}
	if m := nextPresence(t, sub, pjs.PresenceKindLeave); m.Seq != 5 || m.Conns != 0 {
		t.Fatalf("leave %+v", m)
	}
}

func TestPresenceQueryErrors(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	alice := edgetest.Dial(t, e, "alice")
	code := func(err error) string {
		var ce *client.Error
		if !errors.As(err, &ce) {
			t.Fatalf("want a coded error, got %v", err)
		}
		return string(ce.Code)
	}
	if _, err := alice.Presence(ctxT(t), "lobby"); code(err) != "unavailable" {
		t.Fatalf("no presence worker: %v", err)
	}
	if _, err := alice.Presence(ctxT(t), "a>b"); code(err) != "bad_request" {
		t.Fatalf("bad room: %v", err)
	}
	tok := token(t, "bob", time.Hour, auth.Grants{Subscribe: []string{"lobby"}})
	bob, err := client.Dial(ctxT(t), edgetest.URL(e), client.WithToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bob.Close() })
	if _, err := bob.Presence(ctxT(t), "secret"); code(err) != "forbidden" {
		t.Fatalf("room outside the token: %v", err)
	}
}
