package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/protocol"
)

// The edge reads a WebSocket upgrade of /ws or /connection/websocket itself
// (front.go) and hands every other request to net/http. These tests speak
// raw HTTP/1.1 on one TCP connection to tell the two paths apart.

func frontConn(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func upgradeRequest(path, extra string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n"
}

// Requests that are not upgrades of the client endpoints reach net/http
// whole, keep-alive included, even when their first bytes look like one.
func TestFrontHandsOtherRequestsToHTTP(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	c, br := frontConn(t, e.Addr())
	for i, req := range []struct{ line, want string }{
		{"GET /healthz HTTP/1.1", "200"},
		{"GET /wsx HTTP/1.1", "404"}, // a prefix of /ws is not /ws
		{"GET /metrics HTTP/1.1", "200"},
		{"GET /connection/websocketz HTTP/1.1", "404"},
		{"POST /ws HTTP/1.1", "405"},
		{"GET /readyz HTTP/1.1", "200"},
	} {
		if _, err := io.WriteString(c, req.line+"\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s (request %d on one connection): %v", req.line, i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got := fmt.Sprint(resp.StatusCode); got != req.want {
			t.Errorf("%s: status %s, want %s", req.line, got, req.want)
		}
	}
}

// A request line that arrives a byte at a time is still told apart.
func TestFrontReadsASlowRequestLine(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	for _, req := range []string{
		upgradeRequest("/ws?user=slow", ""),
		"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
	} {
		c, br := frontConn(t, e.Addr())
		head := req[:30]
		for i := range len(head) {
			if _, err := c.Write([]byte{head[i]}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if _, err := io.WriteString(c, req[30:]); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%q: %v", req[:20], err)
		}
		want := http.StatusOK
		if strings.Contains(req, "Upgrade") {
			want = http.StatusSwitchingProtocols
		}
		if resp.StatusCode != want {
			t.Errorf("%q: status %d, want %d", req[:20], resp.StatusCode, want)
		}
	}
}

// A refused upgrade read by front gets the same coded JSON error as from
// net/http, then the connection closes; a malformed or oversized request
// head gets a bare 400 or 431.
func TestFrontRefusals(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.Insecure = false })
	for _, tc := range []struct {
		name, req string
		status    int
		code      protocol.Code
	}{
		{"no token", upgradeRequest("/ws", ""), http.StatusUnauthorized, protocol.CodeUnauthorized},
		{"bad token", upgradeRequest("/ws?token=nonsense", ""), http.StatusUnauthorized, protocol.CodeUnauthorized},
		{"foreign origin", upgradeRequest("/ws", "Origin: https://evil.example\r\n"), http.StatusForbidden, protocol.CodeForbidden},
		{"malformed header", "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n", http.StatusBadRequest, ""},
		{"bad version", "GET /ws HTTP/9\r\nHost: 127.0.0.1\r\n\r\n", http.StatusBadRequest, ""},
		{"oversized header", upgradeRequest("/ws", "X-Big: "+strings.Repeat("a", 70<<10)+"\r\n"), http.StatusRequestHeaderFieldsTooLarge, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, br := frontConn(t, e.Addr())
			go io.WriteString(c, tc.req) // the edge may answer before it is all sent
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.status)
			}
			if tc.code != "" {
				var reply struct {
					Error struct {
						Code    protocol.Code `json:"code"`
						Message string        `json:"message"`
					} `json:"error"`
				}
				if err := json.Unmarshal(body, &reply); err != nil || reply.Error.Code != tc.code || reply.Error.Message == "" {
					t.Fatalf("body %q (%v), want a %s error", body, err, tc.code)
				}
			}
			if _, err := br.ReadByte(); err == nil { // EOF, or a reset when the edge left bytes unread
				t.Errorf("after the refusal the connection is still open")
			}
		})
	}
}

// A client that sends its first frame right behind the upgrade request,
// before the 101 (allowed to be buffered together), loses nothing.
func TestFrontKeepsBytesSentBeforeTheAnswer(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	c, br := frontConn(t, e.Addr())
	var frame bytes.Buffer
	if err := ws.WriteFrame(&frame, ws.MaskFrame(ws.NewTextFrame([]byte(`{"id":1,"op":"sub","room":"early"}`)))); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, upgradeRequest("/ws?user=eager", "")+frame.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	rw := struct {
		io.Reader
		io.Writer
	}{br, c}
	for {
		b, err := wsutil.ReadServerText(rw)
		if err != nil {
			t.Fatal(err)
		}
		var reply struct {
			ID   int    `json:"id"`
			OK   bool   `json:"ok"`
			Room string `json:"room"`
		}
		if json.Unmarshal(b, &reply) == nil && reply.ID == 1 {
			if !reply.OK || reply.Room != "early" {
				t.Fatalf("the sub sent with the upgrade was answered %s", b)
			}
			return
		}
	}
}

// A drain does not wait for a client that never finishes its request.
func TestFrontShutdownCutsAStalledRequest(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	c, br := frontConn(t, e.Addr())
	if _, err := io.WriteString(c, "GET /ws?user=stall HTTP/1.1\r\nHost: 127.0.0.1\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the edge is reading the header
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with a stalled request", d)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the stalled connection is still open after the drain")
	}
}
