package edge_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/protocol"
)

// A drain answers every publish already in flight, then closes every client
// with the shutting-down code; new connections and readiness are refused.
func TestDrainFinishesInFlightPublishes(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.PublishRate = 10000; c.PublishBurst = 10000 })
	c := edgetest.Dial(t, e, "alice")
	other := edgetest.Dial(t, e, "bob")

	const n = 200
	acks := make(chan error, n)
	for i := range n {
		go func() {
			_, err := c.Publish(context.Background(), "lobby", fmt.Sprint("d-", i), i)
			acks <- err
		}()
	}
	// Let some publishes be in flight, then drain.
	natstest.Eventually(t, 5*time.Second, func() error {
		if len(acks) == 0 {
			return errors.New("no ack yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- e.Shutdown(ctx) }()

	acked, refused := 0, 0
	for range n {
		err := <-acks
		var ce *client.Error
		switch {
		case err == nil:
			acked++
		case errors.As(err, &ce) && ce.Code == protocol.CodeUnavailable:
			refused++ // sent after the drain began: told to go elsewhere
		case errors.Is(err, client.ErrDisconnected):
			refused++ // still unread in the socket when the edge closed it
		default:
			t.Fatalf("publish during drain: %v", err)
		}
	}
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
	t.Logf("%d acked, %d refused during drain", acked, refused)
	// Every acked publish is in the stream.
	js := natstest.JetStream(t, srv.URL())
	st, err := js.Stream(ctxT(t), "PARLEY_CHAT")
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().State.Msgs; got != uint64(acked) {
		t.Fatalf("stream holds %d messages, %d were acked", got, acked)
	}
	for _, cl := range []*client.Client{c, other} {
		select {
		case <-cl.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("client not closed by the drain")
		}
		var ce *client.CloseError
		if !errors.As(cl.Err(), &ce) || ce.Code != protocol.CloseShuttingDown {
			t.Fatalf("closed with %v, want %d", cl.Err(), protocol.CloseShuttingDown)
		}
	}
	if resp, err := http.Get("http://" + e.Addr() + "/readyz"); err == nil {
		resp.Body.Close()
		t.Fatalf("listener still open after drain: %d", resp.StatusCode)
	}
}

// NATS goes away: publishes get unavailable (never a false ack); when NATS
// returns, the edge's subscriptions and publishes work again on their own.
func TestNATSRestartEdgeRecovers(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.PublishTimeout = time.Second })
	c := edgetest.Dial(t, e, "alice")
	subscribe(t, c, "lobby")
	if _, err := c.Publish(ctxT(t), "lobby", "before", 1); err != nil {
		t.Fatal(err)
	}
	edgetest.Next(t, c)

	srv.Stop()
	if _, err := c.Publish(ctxT(t), "lobby", "during", 2); !isCode(err, protocol.CodeUnavailable) {
		t.Fatalf("publish without NATS: %v", err)
	}
	resp, err := http.Get("http://" + e.Addr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz without NATS: %d", resp.StatusCode)
	}
	srv.Restart(t)

	// The client retries with the same msg_id until the edge is back.
	var ack client.PubAck
	natstest.Eventually(t, 15*time.Second, func() error {
		ack, err = c.Publish(ctxT(t), "lobby", "during", 2)
		return err
	})
	if ack.Seq != 2 {
		t.Fatalf("ack after restart %+v", ack)
	}
	if m := edgetest.Next(t, c); m.Seq != 2 || m.MsgID != "during" {
		t.Fatalf("live delivery after restart: %+v", m)
	}
}

// A drain cancels the work of the connections it closes: a history request
// waiting on an archive that does not answer ends when its connection
// closes, instead of holding the drain for the request timeout (a minute
// here, far past the drain's ten seconds).
func TestDrainCancelsRequestsInFlight(t *testing.T) {
	srv := natstest.StartJetStream(t)
	nc := natstest.Connect(t, srv.URL())
	asked := make(chan struct{}, 1)
	if _, err := nc.Subscribe("test.archive.silent", func(*nats.Msg) {
		select { // hear the request, never answer it
		case asked <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.ArchiveSubject = "test.archive.silent"
		c.RequestTimeout = time.Minute
	})
	c := edgetest.Dial(t, e, "alice")
	done := make(chan error, 1)
	go func() {
		_, err := c.History(context.Background(), "empty", 0, 10)
		done <- err
	}()
	select {
	case <-asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the history request never reached the archive")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatalf("drain with a request in flight: %v", err)
	}
	<-done // answered or disconnected; either way it ended
}
