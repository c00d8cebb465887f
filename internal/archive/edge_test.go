package archive

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/protocol"
)

func sameMsgs(t *testing.T, what string, got, want []protocol.Msg) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d messages, want %d", what, len(got), len(want))
	}
	for i := range got {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("%s: message %d is\n%+v (data %s), want\n%+v (data %s)", what, i, got[i], got[i].Data, want[i], want[i].Data)
		}
	}
}

// The stream keeps 5 messages of the room; the archive has all 30. A
// client's history and resume through the edge's WebSocket get everything,
// exactly as the live pushes looked; without an archiver the edge answers
// from the stream alone, as it always did.
func TestHistoryPastRetentionThroughEdge(t *testing.T) {
	store, _ := openTestSQLite(t)
	srv := natstest.StartJetStream(t)
	// No room cache: alice's live subscription would otherwise keep all 30
	// in the edge's memory and serve the resumes from there.
	e := edgetest.Start(t, srv.URL(), func(c *edge.Config) { c.Stream.MaxMsgsPerSubject = 5; c.RoomCache = 0 })
	arch := startArchiver(t, srv.URL(), store, nil, nil)

	alice := edgetest.Dial(t, e, "alice")
	ctx := t.Context()
	if _, err := alice.Subscribe(ctx, "small"); err != nil {
		t.Fatal(err)
	}
	// One at a time, each archived before the next: with only 5 kept, an
	// archiver more than 5 behind would never see the oldest (the stream
	// drops them first), and this test is about reading, not racing.
	m := &mesh{srv: srv, js: natstest.JetStream(t, srv.URL())}
	for i := range 30 {
		if _, err := alice.Publish(ctx, "small", fmt.Sprintf("m-%d", i), map[string]any{"i": i, "text": "hé \"quoted\""}); err != nil {
			t.Fatal(err)
		}
		waitArchived(t, m, store, int64(i+1))
	}
	live := edgetest.NextN(t, alice, 30)

	history := func(c *client.Client, before uint64, limit int) []protocol.Msg {
		t.Helper()
		msgs, err := c.History(ctx, "small", before, limit)
		if err != nil {
			t.Fatalf("history before %d limit %d: %v", before, limit, err)
		}
		return msgs
	}
	sameMsgs(t, "newest 20", history(alice, 0, 20), live[10:])
	sameMsgs(t, "before the 11th", history(alice, live[10].Seq, 50), live[:10])
	sameMsgs(t, "default limit", history(alice, 0, 0), live)
	sameMsgs(t, "within the stream", history(alice, live[28].Seq, 2), live[26:28])

	dave := edgetest.Dial(t, e, "dave")
	if r, err := dave.Subscribe(ctx, "small", client.Last(12)); err != nil || r.Recovered == nil || !*r.Recovered {
		t.Fatalf("sub last 12: %+v %v", r, err)
	}
	sameMsgs(t, "last 12", edgetest.NextN(t, dave, 12), live[18:])

	bob := edgetest.Dial(t, e, "bob")
	r, err := bob.Subscribe(ctx, "small", client.Since(live[2].Seq))
	if err != nil {
		t.Fatal(err)
	}
	if r.Recovered == nil || !*r.Recovered {
		t.Fatalf("resume past retention with the archive: %+v", r)
	}
	sameMsgs(t, "resumed", edgetest.NextN(t, bob, 27), live[3:])

	// More of the missed messages left the stream (22) than the edge asks
	// the archive for (--max-recover): the newest that many of those, then
	// everything the stream holds (5), and recovered:false saying so. With
	// a max under the stream's 5, that part is a long resume (paced,
	// through a consumer): the same messages.
	for _, max := range []int{20, 4} {
		small := edgetest.Start(t, srv.URL(), func(c *edge.Config) {
			c.Stream.MaxMsgsPerSubject = 5
			c.RoomCache = 0
			c.MaxRecover = max
		})
		erin := edgetest.Dial(t, small, "erin")
		r, err := erin.Subscribe(ctx, "small", client.Since(live[2].Seq))
		if err != nil {
			t.Fatal(err)
		}
		if r.Recovered == nil || *r.Recovered || r.Reason != fmt.Sprintf("more than %d of the missed messages left the stream; the newest %d of those follow, then all the stream holds; read older ones with history", max, max) {
			t.Fatalf("resume of 27 with max %d: %+v", max, r)
		}
		sameMsgs(t, fmt.Sprintf("the newest %d of the archive's, then the stream's", max), edgetest.NextN(t, erin, max+5), live[25-max:])
	}

	// No archiver: the stream's 5 and recovered:false, as before.
	if err := arch.stop(t); err != nil {
		t.Fatal(err)
	}
	sameMsgs(t, "no archive", history(alice, 0, 20), live[25:])
	carol := edgetest.Dial(t, e, "carol")
	r, err = carol.Subscribe(ctx, "small", client.Since(live[2].Seq))
	if err != nil {
		t.Fatal(err)
	}
	if r.Recovered == nil || *r.Recovered {
		t.Fatalf("resume past retention without an archive: %+v", r)
	}
	sameMsgs(t, "what the stream has", edgetest.NextN(t, carol, 5), live[25:])
}
