package edge_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// storeUnrepublished stores a message in room the way a lost RePublish
// leaves it: acknowledged by the stream, never on the live subject (the
// stream's RePublish is off while it is stored).
func storeUnrepublished(t *testing.T, js jetstream.JetStream, opts pjs.StreamOptions, room, text string) uint64 {
	t.Helper()
	ctx := t.Context()
	cfg := pjs.ChatStreamConfig(opts)
	with := cfg
	cfg.RePublish = nil
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(ctx, pjs.RoomSubject(room), []byte(`{"from":"bot","data":"`+text+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.UpdateStream(ctx, with); err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func waitSeq(t *testing.T, c *client.Client, want uint64, within time.Duration) {
	t.Helper()
	select {
	case m := <-c.Messages():
		if m.Seq != want {
			t.Fatalf("got seq %d, want %d", m.Seq, want)
		}
	case <-time.After(within):
		t.Fatalf("seq %d (stored, its republish lost) not delivered within %v to a subscriber of a quiet room", want, within)
	}
}

// A room that stays quiet after a lost RePublish has no later message to
// reveal the gap: the periodic resync delivers it.
func TestLostRepublishInQuietRoomIsDelivered(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.ResyncInterval = 300 * time.Millisecond })
	js := natstest.JetStream(t, srv.URL())
	c := edgetest.Dial(t, e, "alice")
	subscribe(t, c, "quiet")
	first, err := c.Publish(ctxT(t), "quiet", "m1", "first")
	if err != nil {
		t.Fatal(err)
	}
	waitSeq(t, c, first.Seq, 5*time.Second)
	seq := storeUnrepublished(t, js, pjs.DefaultStreamOptions(), "quiet", "second")
	waitSeq(t, c, seq, 10*time.Second)
	noMessage(t, c, 500*time.Millisecond) // delivered once, not at every pass
}

// On a cluster, a stream leader change triggers a resync at once: losses
// around an election are caught without waiting for the interval.
func TestLeaderChangeResyncs(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = s.URL()
	}
	url := strings.Join(urls, ",")
	opts := pjs.DefaultStreamOptions()
	opts.Replicas = 3
	e := startEdge(t, url, func(c *edge.Config) {
		c.Stream = opts
		c.ResyncInterval = time.Hour // only the advisory can deliver it in time
	})
	nc := natstest.Connect(t, url, nats.MaxReconnects(-1))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	c := edgetest.Dial(t, e, "alice")
	subscribe(t, c, "quiet")
	first, err := c.Publish(ctxT(t), "quiet", "m1", "first")
	if err != nil {
		t.Fatal(err)
	}
	waitSeq(t, c, first.Seq, 10*time.Second)
	seq := storeUnrepublished(t, js, opts, "quiet", "second")
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	natstest.Eventually(t, 20*time.Second, func() error {
		m, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN."+pjs.ChatStream, nil)
		if err != nil {
			return err
		}
		if !strings.Contains(string(m.Data), `"success":true`) {
			return fmt.Errorf("step down: %s", m.Data)
		}
		return nil
	})
	waitSeq(t, c, seq, 15*time.Second)
}
