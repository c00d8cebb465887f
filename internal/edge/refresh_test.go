package edge_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/protocol"
)

// A connection outlives its first token by refreshing in-band: the edge
// pushes "expiring" before exp and the Go client refreshes from its token
// function, three times over, on one connection. The second refresh drops
// room b from the grants: the edge ends that subscription with an
// "unsubscribed" push, and room a keeps flowing.
func TestConnectionKeptAcrossTokenRefreshes(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	const ttl = 3 * time.Second // "expiring" comes at ttl/2
	both := auth.Grants{Subscribe: []string{"a", "b"}, Publish: []string{"a", "b"}}
	onlyA := auth.Grants{Subscribe: []string{"a"}, Publish: []string{"a"}}
	var calls atomic.Int32 // 1: the dial; 2..4: the three refreshes
	c, err := client.Dial(context.Background(), edgetest.URL(e), client.WithTokenFunc(func(context.Context) (string, error) {
		g := both
		if calls.Add(1) >= 3 {
			g = onlyA
		}
		return token(t, "carol", ttl, g), nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for _, room := range []string{"a", "b"} {
		if _, err := c.Subscribe(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
	pub := edgetest.Dial(t, e, "dave")
	deadline := time.After(4 * ttl)
	var unsubscribed, expiring int
	for calls.Load() < 4 || unsubscribed == 0 {
		select {
		case ev := <-c.Events():
			switch ev.Op {
			case protocol.OpExpiring:
				expiring++
			case protocol.OpUnsubscribed:
				if ev.Room != "b" {
					t.Fatalf("unsubscribed from %q, want b", ev.Room)
				}
				unsubscribed++
			case "reconnected", "refresh_failed":
				t.Fatalf("event %+v: the connection was to be kept by refreshing", ev)
			}
		case <-deadline:
			t.Fatalf("after %s: %d token calls, %d expiring, %d unsubscribed", 4*ttl, calls.Load(), expiring, unsubscribed)
		}
	}
	if unsubscribed != 1 {
		t.Fatalf("%d unsubscribed pushes, want 1", unsubscribed)
	}
	// Past the first token's exp, on the same connection: a still flows.
	ack, err := pub.Publish(ctx, "a", "after-refreshes", map[string]string{"text": "still here"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-c.Messages():
		if m.Room != "a" || m.Seq != ack.Seq {
			t.Fatalf("got %+v, want room a seq %d", m, ack.Seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message on room a after the refreshes")
	}
	// Room b is no longer the connection's: subscribing again is refused.
	var ce *client.Error
	if _, err := c.Subscribe(ctx, "b"); !errors.As(err, &ce) || ce.Code != protocol.CodeForbidden {
		t.Fatalf("sub b after losing the grant: %v, want forbidden", err)
	}
}

// A refresh must be a valid token of the same user; anything else is
// refused with a code, and the connection keeps its old token.
func TestRefreshRefusals(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	c, err := client.Dial(context.Background(), edgetest.URL(e), client.WithToken(token(t, "erin", time.Minute, auth.Grants{})))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for _, tc := range []struct {
		token string
		code  protocol.Code
	}{
		{"", protocol.CodeBadRequest},
		{"not-a-jwt", protocol.CodeUnauthorized},
		{token(t, "erin", -time.Minute, auth.Grants{}), protocol.CodeUnauthorized}, // expired
		{token(t, "mallory", time.Minute, auth.Grants{}), protocol.CodeForbidden},
	} {
		var ce *client.Error
		if err := c.Refresh(ctx, tc.token); !errors.As(err, &ce) || ce.Code != tc.code {
			t.Errorf("refresh with %q: %v, want %s", fmt.Sprintf("%.12s", tc.token), err, tc.code)
		}
	}
	if err := c.Refresh(ctx, token(t, "erin", time.Hour, auth.Grants{})); err != nil {
		t.Fatalf("a valid refresh after the refusals: %v", err)
	}
}
