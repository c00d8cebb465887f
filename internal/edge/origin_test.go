package edge_test

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

// handshake attempts a WebSocket upgrade with the given headers (a "Host"
// entry replaces the Host header, as a browser sends a rebound name) and
// returns the connection, or the refusal's status and body.
func handshake(t *testing.T, d *websocket.Dialer, url string, h http.Header) (*websocket.Conn, int, string) {
	t.Helper()
	if d == nil {
		d = websocket.DefaultDialer
	}
	ws, resp, err := d.DialContext(ctxT(t), url, h)
	if err == nil {
		t.Cleanup(func() { ws.Close() })
		return ws, http.StatusSwitchingProtocols, ""
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return nil, resp.StatusCode, string(body)
}

func headers(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// A DNS-rebinding page: evil.example's DNS answers 127.0.0.1, so the
// browser connects to the dev edge with Origin and Host both evil.example.
// Same-host would accept it, and the page would be any user it likes.
func TestInsecureEdgeRefusesDNSRebinding(t *testing.T) {
	srv := natstest.StartJetStream(t)
	var logs edgetest.LogBuffer
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	_, port, _ := net.SplitHostPort(e.Addr())
	evil := "evil.example:" + port
	url := edgetest.URL(e) + "?user=admin"

	for name, h := range map[string]http.Header{
		"rebound Origin and Host": headers("Origin", "http://"+evil, "Host", evil),
		"foreign origin":          headers("Origin", "http://"+evil),
		"rebound Host, no Origin": headers("Host", evil),
		"https foreign origin":    headers("Origin", "https://evil.example"),
	} {
		_, status, body := handshake(t, nil, url, h)
		if status != http.StatusForbidden || !strings.Contains(body, `"code":"forbidden"`) {
			t.Errorf("%s: HTTP %d %s, want 403 forbidden", name, status, body)
		}
	}
	// The Host guard covers every path: metrics and profiles too.
	req, _ := http.NewRequest("GET", "http://"+e.Addr()+"/metrics", nil)
	req.Host = evil
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "DNS-rebinding") {
		t.Errorf("/metrics for %s: HTTP %d %s", evil, resp.StatusCode, body)
	}
	if v := edgetest.Metric(t, e, `parley_edge_connects_total{result="forbidden"}`); v != 4 {
		t.Errorf("forbidden connects %v, want 4", v)
	}
	// Each kind of refusal is logged, naming what would allow it, but a
	// flood is not: two origin and three Host refusals made one line each.
	out := logs.String()
	if n := strings.Count(out, "refused a browser origin"); n != 1 || !strings.Contains(out, "allow_with=--allowed-origins") {
		t.Errorf("origin refusals logged %d times:\n%s", n, out)
	}
	if n := strings.Count(out, "foreign Host"); n != 1 || !strings.Contains(out, "allow_with=--allowed-hosts") {
		t.Errorf("Host refusals logged %d times:\n%s", n, out)
	}
}

// Pages served from this machine on another port (a dev server, the
// README's browser console) may use the insecure edge, as may the names and
// origins the operator allowed; other schemes and opaque origins may not.
func TestInsecureEdgeOrigins(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.AllowedOrigins = []string{"https://chat.example"}
		c.AllowedHosts = []string{"parley.test"}
	})
	_, port, _ := net.SplitHostPort(e.Addr())
	url := edgetest.URL(e) + "?user=alice"
	for _, tc := range []struct {
		h    http.Header
		want int
	}{
		{headers("Origin", "http://localhost:3000"), 101},
		{headers("Origin", "http://127.0.0.1:5173"), 101},
		{headers("Origin", "https://127.0.0.2"), 101},
		{headers("Origin", "http://[::1]:8000"), 101},
		{headers("Origin", "http://app.localhost:3000"), 101},
		{headers("Origin", "http://localhost:3000", "Host", "localhost:"+port), 101},
		{headers("Origin", "https://chat.example"), 101},                                // --allowed-origins
		{headers("Host", "parley.test:"+port), 101},                                     // --allowed-hosts
		{headers("Host", "192.0.2.10:"+port), 101},                                      // an address cannot be rebound
		{headers("Origin", "http://192.0.2.10:"+port, "Host", "192.0.2.10:"+port), 403}, // but it is not this machine's page
		{headers("Origin", "null"), 403},
		{headers("Origin", "file://"), 403},
		{headers("Origin", "chrome-extension://abcdef"), 403},
		{headers("Origin", "http://localhost.evil.example"), 403},
	} {
		if _, status, body := handshake(t, nil, url, tc.h); status != tc.want {
			t.Errorf("%v: HTTP %d %s, want %d", tc.h, status, body, tc.want)
		}
	}
}

// A secure edge without --allowed-origins accepts pages of its own host
// with an http(s) origin, and checks the scheme where it is known: a
// trusted proxy's X-Forwarded-Proto.
func TestSecureEdgeSameHostOrigin(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) {
		c.Insecure = false
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	url := edgetest.URL(e) + "?token=" + token(t, "alice", time.Hour, auth.Grants{Subscribe: []string{"*"}})
	host := e.Addr()
	for _, tc := range []struct {
		h    http.Header
		want int
	}{
		{headers("Origin", "http://"+host), 101},
		{headers("Origin", "https://"+host), 101}, // behind a TLS proxy the edge was not told about
		{headers("Origin", "https://"+host, "X-Forwarded-Proto", "https"), 101},
		{headers("Origin", "http://"+host, "X-Forwarded-Proto", "https"), 403},
		{headers("Origin", "https://"+host, "X-Forwarded-Proto", "http"), 403},
		{headers("Origin", "http://other.example"), 403},
		{headers("Origin", "null"), 403},
		{headers("Origin", "ws://"+host), 403},
		{headers("Host", "anything.example"), 101}, // no DNS-rebinding guard: a page has no token
	} {
		if _, status, body := handshake(t, nil, url, tc.h); status != tc.want {
			t.Errorf("%v: HTTP %d %s, want %d", tc.h, status, body, tc.want)
		}
	}
}

// Listing origins, even "*", never admits "null" (file:// pages, sandboxed
// frames); a listed extension origin is admitted exactly.
func TestListedOriginsNeverAdmitNull(t *testing.T) {
	srv := natstest.StartJetStream(t)
	for _, allowed := range [][]string{{"*"}, {"null", "chrome-extension://abcdef"}} {
		e := startEdge(t, srv.URL(), func(c *edge.Config) { c.Insecure = false; c.AllowedOrigins = allowed })
		url := edgetest.URL(e) + "?token=" + token(t, "alice", time.Hour, auth.Grants{Subscribe: []string{"*"}})
		want := map[string]int{"null": 403, "https://chat.example": 101, "chrome-extension://abcdef": 101}
		if allowed[0] == "*" {
			want["https://chat.example"], want["chrome-extension://abcdef"] = 101, 403
		} else {
			want["https://chat.example"] = 403
		}
		for origin, code := range want {
			if _, status, body := handshake(t, nil, url, headers("Origin", origin)); status != code {
				t.Errorf("allowed %v, Origin %s: HTTP %d %s, want %d", allowed, origin, status, body, code)
			}
		}
	}
}
