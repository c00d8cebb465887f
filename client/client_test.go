package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

// The client's edge dies mid-stream while a backend keeps publishing: the
// client reconnects to another edge on its own, resumes every room from the
// last seq it delivered, and the application sees each message exactly
// once, in order.
func TestReconnectResumesOnAnotherEdge(t *testing.T) {
	srv := natstest.StartJetStream(t)
	a, b := edgetest.Start(t, srv.URL(), nil), edgetest.Start(t, srv.URL(), nil)
	pa := edgetest.StartProxy(t, a.Addr(), nil)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "ws://"+pa.Addr()+"/ws",
		client.WithUser("alice"),
		client.WithReconnect(client.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond}),
		client.WithFallbackURLs("ws://"+b.Addr()+"/ws"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, room := range []string{"lobby", "ops"} {
		if _, err := c.Subscribe(ctx, room); err != nil {
			t.Fatal(err)
		}
	}

	js := natstest.JetStream(t, srv.URL())
	const n = 400
	stored := map[string][]uint64{}
	var mu sync.Mutex
	published := make(chan error, 1)
	go func() {
		for i := range n {
			room := []string{"lobby", "ops"}[i%2]
			ack, err := js.Publish(ctx, "chat.room."+room, fmt.Appendf(nil, `{"from":"svc","data":%d}`, i))
			if err != nil {
				published <- err
				return
			}
			mu.Lock()
			stored[room] = append(stored[room], ack.Sequence)
			mu.Unlock()
			if i%50 == 0 {
				time.Sleep(5 * time.Millisecond) // spread the publishes over the crash
			}
		}
		published <- nil
	}()

	got := map[string][]uint64{}
	for i := range n {
		if i == n/4 {
			pa.Kill() // edge A is gone for this client
		}
		select {
		case m, ok := <-c.Messages():
			if !ok {
				t.Fatalf("client ended: %v", c.Err())
			}
			got[m.Room] = append(got[m.Room], m.Seq)
		case <-ctx.Done():
			t.Fatalf("after %d messages: %v", i, ctx.Err())
		}
	}
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	for room, want := range stored {
		if fmt.Sprint(got[room]) != fmt.Sprint(want) {
			t.Fatalf("room %s: got %v\nwant %v", room, got[room], want)
		}
	}
	reconnected := false
	for !reconnected {
		select {
		case ev := <-c.Events():
			if ev.Op == "lost" {
				t.Fatalf("resume not recovered: %+v", ev)
			}
			reconnected = ev.Op == "reconnected"
		case <-ctx.Done():
			t.Fatal("no reconnected event")
		}
	}
	select {
	case m := <-c.Messages():
		t.Fatalf("extra message %+v", m)
	case <-time.After(100 * time.Millisecond):
	}
	// Requests work on the new connection.
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// Without WithReconnect the client ends with its connection; after Close
// every call says so.
func TestClientEndsWithoutReconnect(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := edgetest.Start(t, srv.URL(), nil)
	p := edgetest.StartProxy(t, e.Addr(), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "ws://"+p.Addr()+"/ws", client.WithUser("bob"))
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("client outlived its connection")
	}
	if c.Err() == nil {
		t.Fatal("no error after the connection broke")
	}
	if _, ok := <-c.Messages(); ok {
		t.Fatal("Messages not closed")
	}
	c.Close()
	if err := c.Ping(ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("ping after close: %v", err)
	}
}
