package edge_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

// Large messages in many rooms no longer fill the edge's heap: what the
// rooms' caches hold stays within --room-cache-total-bytes (the gauge says
// so, and evictions are counted), while a resume the cache still covers is
// served from it and one it no longer covers reads the stream; both deliver
// every missed message once, in order, then live.
func TestRoomCacheStaysWithinItsBytes(t *testing.T) {
	const (
		rooms     = 16
		perRoom   = 64 << 10
		total     = 512 << 10
		perRoomN  = 20
		dataBytes = 8 << 10
	)
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.RoomCacheBytes = perRoom
		c.RoomCacheTotalBytes = total
	})
	be := newBackend(t, srv.URL())
	ctx := ctxT(t)
	payload := fmt.Appendf(nil, `{"from":"svc","data":"%s"}`, strings.Repeat("x", dataBytes))
	pub := func(room string) uint64 {
		t.Helper()
		ack, err := be.js.Publish(ctx, "chat.room."+room, payload)
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	name := func(i int) string { return fmt.Sprintf("big-%d", i) }

	// The keeper holds every room open, as its other members would.
	keeper := edgetest.Dial(t, e, "keeper")
	for i := range rooms {
		subscribe(t, keeper, name(i))
	}
	// 16 rooms × 20 × 8 KiB is 2.6 MB of frames; the bound is 512 KiB.
	// Round-robin, as busy rooms publish, so every room stays busy.
	stored := make([][]uint64, rooms)
	for range perRoomN {
		for i := range rooms {
			stored[i] = append(stored[i], pub(name(i)))
		}
		if got := edgetest.Metric(t, e, "parley_edge_room_cache_bytes"); got > total {
			t.Fatalf("room caches hold %v bytes, bound %d", got, total)
		}
	}
	got := make([][]uint64, rooms)
	for range rooms * perRoomN {
		m := edgetest.Next(t, keeper)
		var i int
		if _, err := fmt.Sscanf(m.Room, "big-%d", &i); err != nil {
			t.Fatalf("message of room %q", m.Room)
		}
		got[i] = append(got[i], m.Seq)
	}
	for i := range rooms {
		equalSeqs(t, "keeper "+name(i), got[i], stored[i])
	}
	cached := edgetest.Metric(t, e, "parley_edge_room_cache_bytes")
	if cached <= 0 || cached > total {
		t.Fatalf("room caches hold %v bytes, want within (0, %d]", cached, total)
	}
	if n := edgetest.Metric(t, e, `parley_edge_room_cache_evictions_total{bound="total"}`); n == 0 {
		t.Fatal("no evictions by the total bound counted")
	}

	// A resume of the last two messages: the cache covers it.
	fromMemory := edgetest.Metric(t, e, "parley_edge_replayed_from_memory_total")
	c := edgetest.Dial(t, e, "alice")
	for i := range rooms {
		s := stored[i]
		resume(ctx, t, c, name(i), s[len(s)-3], s[len(s)-2:])
	}
	if got := edgetest.Metric(t, e, "parley_edge_replayed_from_memory_total") - fromMemory; got != 2*rooms {
		t.Fatalf("%v messages replayed from memory, want %d", got, 2*rooms)
	}
	// A resume from the first message: evicted, so the stream serves it.
	fromMemory += 2 * rooms
	c2 := edgetest.Dial(t, e, "bob")
	for i := range rooms {
		resume(ctx, t, c2, name(i), stored[i][0], stored[i][1:])
	}
	if got := edgetest.Metric(t, e, "parley_edge_replayed_from_memory_total") - fromMemory; got != 0 {
		t.Fatalf("%v messages of evicted resumes replayed from memory", got)
	}
	// Then live, once, in order, on both.
	live := pub(name(3))
	for _, cl := range []*client.Client{c, c2} {
		if m := edgetest.Next(t, cl); m.Seq != live || m.Room != name(3) {
			t.Fatalf("after the replays got %s/%d, want live %s/%d", m.Room, m.Seq, name(3), live)
		}
		noMessage(t, cl, 50*time.Millisecond)
		if d := cl.Duplicates(); d != 0 {
			t.Fatalf("%d duplicates", d)
		}
	}
	if got := edgetest.Metric(t, e, "parley_edge_room_cache_bytes"); got > total {
		t.Fatalf("room caches hold %v bytes, bound %d", got, total)
	}
}

// resume subscribes c to room after seq since and checks that exactly want
// follows, recovered.
func resume(ctx context.Context, t *testing.T, c *client.Client, room string, since uint64, want []uint64) {
	t.Helper()
	r, err := c.Subscribe(ctx, room, client.Since(since))
	if err != nil || r.Recovered == nil || !*r.Recovered || r.Seq != want[len(want)-1] {
		t.Fatalf("resume %s since %d: %+v %v", room, since, r, err)
	}
	equalSeqs(t, "resume "+room, collect(t, c, len(want)), want)
}
