package edge_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

func wantRateLimited(t *testing.T, what string, status int, body, mention string) {
	t.Helper()
	if status != http.StatusTooManyRequests || !strings.Contains(body, `"code":"rate_limited"`) || !strings.Contains(body, mention) {
		t.Fatalf("%s: HTTP %d %s, want 429 rate_limited naming %s", what, status, body, mention)
	}
}

// eventuallyConnects retries an upgrade until it succeeds: a closed
// connection's place is given back at the end of its teardown, a moment
// after the client saw the close.
func eventuallyConnects(t *testing.T, d *websocket.Dialer, url string, h http.Header) *websocket.Conn {
	t.Helper()
	var ws *websocket.Conn
	natstest.Eventually(t, 10*time.Second, func() error {
		c, resp, err := d.DialContext(ctxT(t), url, h)
		if err != nil {
			if resp != nil {
				resp.Body.Close()
			}
			return err
		}
		ws = c
		return nil
	})
	t.Cleanup(func() { ws.Close() })
	return ws
}

func TestConnectionsPerUserLimit(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxConnsPerUser = 2 })
	alice := edgetest.URL(e) + "?user=alice"

	first, status, body := handshake(t, nil, alice, nil)
	if first == nil {
		t.Fatalf("first: HTTP %d %s", status, body)
	}
	if ws, status, body := handshake(t, nil, alice, nil); ws == nil {
		t.Fatalf("second: HTTP %d %s", status, body)
	}
	_, status, body = handshake(t, nil, alice, nil)
	wantRateLimited(t, "third", status, body, "--max-connections-per-user")
	// Another user is not affected, and neither is a token's user of
	// another name.
	if ws, status, body := handshake(t, nil, edgetest.URL(e)+"?user=bob", nil); ws == nil {
		t.Fatalf("bob: HTTP %d %s", status, body)
	}
	if v := edgetest.Metric(t, e, `parley_edge_connects_total{result="user_limit"}`); v != 1 {
		t.Errorf("user_limit connects %v, want 1", v)
	}
	if v := edgetest.Metric(t, e, "parley_edge_connected_users"); v != 2 {
		t.Errorf("connected users %v, want 2", v)
	}
	// One closes: its place is free again.
	first.Close()
	eventuallyConnects(t, websocket.DefaultDialer, alice, nil)
	_, status, body = handshake(t, nil, alice, nil)
	wantRateLimited(t, "third again", status, body, "--max-connections-per-user")
}

// Upgrades that fail after the count was taken (here: not a WebSocket
// request at all) give their place back, and concurrent upgrades never get
// more places than the limit.
func TestConnectionLimitsAreExact(t *testing.T) {
	srv := natstest.StartJetStream(t)
	const limit = 3
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxConnsPerUser = limit })
	for range 2 * limit {
		resp, err := http.Get("http://" + e.Addr() + "/ws?user=carol")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain GET /ws: HTTP %d", resp.StatusCode)
		}
	}

	const n = 4 * limit
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		conns   []*websocket.Conn
		limited int
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ws, resp, err := websocket.DefaultDialer.Dial(edgetest.URL(e)+"?user=carol", nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				conns = append(conns, ws)
			case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
				limited++
			default:
				t.Errorf("dial: %v", err)
			}
		}()
	}
	wg.Wait()
	if len(conns) != limit || limited != n-limit {
		t.Fatalf("%d connected, %d limited; want %d and %d", len(conns), limited, limit, n-limit)
	}
	for _, ws := range conns {
		ws.Close()
	}
	// Every place comes back once: the gauges return to zero and the full
	// limit is available again.
	natstest.Eventually(t, 10*time.Second, func() error {
		if v := edgetest.Metric(t, e, "parley_edge_connected_users"); v != 0 {
			return fmt.Errorf("connected users %v", v)
		}
		if v := edgetest.Metric(t, e, "parley_edge_connected_addresses"); v != 0 {
			return fmt.Errorf("connected addresses %v", v)
		}
		return nil
	})
	for i := range limit {
		if ws, status, body := handshake(t, nil, edgetest.URL(e)+"?user=carol", nil); ws == nil {
			t.Fatalf("connection %d after all closed: HTTP %d %s", i, status, body)
		}
	}
}

// dialerFrom dials from a loopback source address (Linux routes all of
// 127.0.0.0/8 to lo), as the load tool does.
func dialerFrom(ip string) *websocket.Dialer {
	return &websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		NetDialContext:   (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext,
	}
}

func TestConnectionsPerIPLimit(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxConnsPerIP = 2 })
	url := func(user string) string { return edgetest.URL(e) + "?user=" + user }
	from2 := dialerFrom("127.0.0.2")

	first, status, body := handshake(t, from2, url("a"), nil)
	if first == nil {
		t.Fatalf("first: HTTP %d %s", status, body)
	}
	if ws, status, body := handshake(t, from2, url("b"), nil); ws == nil {
		t.Fatalf("second: HTTP %d %s", status, body)
	}
	// Without --trusted-proxies, X-Forwarded-For is the client's own word.
	_, status, body = handshake(t, from2, url("c"), headers("X-Forwarded-For", "198.51.100.1"))
	wantRateLimited(t, "third", status, body, "127.0.0.2")
	if ws, status, body := handshake(t, dialerFrom("127.0.0.3"), url("c"), nil); ws == nil {
		t.Fatalf("another address: HTTP %d %s", status, body)
	}
	if v := edgetest.Metric(t, e, `parley_edge_connects_total{result="ip_limit"}`); v != 1 {
		t.Errorf("ip_limit connects %v, want 1", v)
	}
	if v := edgetest.Metric(t, e, "parley_edge_connected_addresses"); v != 2 {
		t.Errorf("connected addresses %v, want 2", v)
	}
	first.Close()
	eventuallyConnects(t, from2, url("d"), nil)
	_, status, _ = handshake(t, from2, url("e"), nil)
	if status != http.StatusTooManyRequests {
		t.Fatalf("third again: HTTP %d", status)
	}
}

// Behind a trusted proxy the client is the right-most X-Forwarded-For entry
// that is not a trusted proxy: what a client writes to the left of it
// cannot dodge the limit.
func TestConnectionsPerIPBehindTrustedProxy(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.MaxConnsPerIP = 1
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")}
	})
	url := func(user string) string { return edgetest.URL(e) + "?user=" + user }
	proxy := dialerFrom("127.0.0.1")
	if ws, status, body := handshake(t, proxy, url("a"), headers("X-Forwarded-For", "203.0.113.7, 10.1.2.3")); ws == nil {
		t.Fatalf("first: HTTP %d %s", status, body)
	}
	_, status, body := handshake(t, proxy, url("b"), headers("X-Forwarded-For", "192.0.2.99, 203.0.113.7"))
	wantRateLimited(t, "spoofed left entry", status, body, "203.0.113.7")
	if ws, status, body := handshake(t, proxy, url("c"), headers("X-Forwarded-For", "203.0.113.8")); ws == nil {
		t.Fatalf("another client: HTTP %d %s", status, body)
	}
	// IPv6 clients are counted per /64.
	if ws, status, body := handshake(t, proxy, url("d"), headers("X-Forwarded-For", "2001:db8:1:2::1")); ws == nil {
		t.Fatalf("v6 client: HTTP %d %s", status, body)
	}
	_, status, body = handshake(t, proxy, url("e"), headers("X-Forwarded-For", "2001:db8:1:2:ffff::9"))
	wantRateLimited(t, "same /64", status, body, "2001:db8:1:2::/64")
	// An untrusted peer's header is ignored: it is counted as itself.
	if ws, status, body := handshake(t, dialerFrom("127.0.0.2"), url("f"), headers("X-Forwarded-For", "203.0.113.7")); ws == nil {
		t.Fatalf("untrusted peer: HTTP %d %s", status, body)
	}
}

// An idle keep-alive HTTP connection (a probe's, a scraper's, or one held
// open on purpose) is closed after HTTPIdleTimeout instead of being held
// for ever outside --max-connections.
func TestIdleKeepAliveClosed(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.HTTPIdleTimeout = 200 * time.Millisecond })
	conn, err := net.Dial("tcp", e.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("healthz: HTTP %d close=%v %s", resp.StatusCode, resp.Close, body)
	}
	// The server closes it: the read ends with EOF, long before ours
	// would time out.
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle keep-alive connection: %v after %v, want EOF", err, time.Since(start))
	}
}

// net/http's request deadlines end at Hijack: a WebSocket lives and works
// well past HTTPReadTimeout and HTTPIdleTimeout, busy or idle.
func TestWebSocketOutlivesHTTPTimeouts(t *testing.T) {
	srv := natstest.StartJetStream(t)
	const d = 150 * time.Millisecond
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.HTTPReadTimeout, c.HTTPIdleTimeout = d, d
		c.PublishRate, c.PublishBurst = 1e5, 1e5
		c.RequestRate, c.RequestBurst = 1e5, 1e5
	})
	c := edgetest.Dial(t, e, "alice")
	subscribe(t, c, "lobby")
	start := time.Now()
	for i := 0; time.Since(start) < 4*d; i++ {
		if _, err := c.Publish(ctxT(t), "lobby", fmt.Sprint("busy-", i), i); err != nil {
			t.Fatalf("publish %d after %v: %v", i, time.Since(start), err)
		}
		edgetest.Next(t, c)
	}
	noMessage(t, c, 4*d) // idle, well past both timeouts
	if _, err := c.Publish(ctxT(t), "lobby", "after-idle", 0); err != nil {
		t.Fatal(err)
	}
	edgetest.Next(t, c)
	if err := c.Err(); err != nil {
		t.Fatalf("connection ended: %v", err)
	}
}
