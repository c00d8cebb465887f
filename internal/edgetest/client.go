package edgetest

import (
	"testing"
	"time"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/protocol"
)

// Wait bounds how long Next waits for one message: long enough for a
// loaded machine under the race detector, short enough that a lost message
// fails the test rather than its package's timeout.
const Wait = 10 * time.Second

// Dial connects to e as user (?user=: Start's edges are insecure) and
// closes the client when the test ends.
func Dial(t testing.TB, e *edge.Edge, user string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.Dial(t.Context(), URL(e), append([]client.Option{client.WithUser(user)}, opts...)...)
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Next is c's next pushed message; the test fails when none comes within
// Wait or the client ends.
func Next(t testing.TB, c *client.Client) protocol.Msg {
	t.Helper()
	select {
	case m, ok := <-c.Messages():
		if !ok {
			t.Fatalf("connection ended: %v", c.Err())
		}
		return m
	case <-time.After(Wait):
		t.Fatalf("no message within %v", Wait)
	}
	return protocol.Msg{}
}

// NextN is c's next n pushed messages, each within Wait of the one before.
func NextN(t testing.TB, c *client.Client, n int) []protocol.Msg {
	t.Helper()
	out := make([]protocol.Msg, 0, n)
	for len(out) < n {
		out = append(out, Next(t, c))
	}
	return out
}
