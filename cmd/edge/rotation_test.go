package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	osignal "os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/auth/authtest"
	"github.com/parley-mesh/parley/internal/certtest"
	"github.com/parley-mesh/parley/internal/config/configtest"
	"github.com/parley-mesh/parley/internal/natstest"
)

// startEdge runs the edge binary's run (flags and all) on a NATS server of
// its own and returns its address once it accepts connections. It drains
// when the test ends, and must end without error.
func startEdge(t *testing.T, args ...string) string {
	t.Helper()
	ns := natstest.StartJetStream(t)
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = runTo(ctx, append([]string{"--nats", ns.URL(), "--listen", addr, "--log-level", "error", "--drain-timeout", "2s"}, args...), env(nil), io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if runErr != nil {
			t.Errorf("edge: %v", runErr)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case <-done:
			t.Fatalf("edge ended before listening: %v", runErr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge not listening on %s after 30s", addr)
		}
	}
}

// dialer trusts ca and records the common name of the certificate its
// handshake was shown.
func dialer(ca *certtest.Cert, seen *string) *websocket.Dialer {
	return &websocket.Dialer{HandshakeTimeout: 5 * time.Second, TLSClientConfig: &tls.Config{
		RootCAs: ca.Pool(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			*seen = cs.PeerCertificates[0].Subject.CommonName
			return nil
		},
	}}
}

// connect dials the edge with opts; it subscribes to lobby so the test can
// later prove the connection still delivers.
func connect(t *testing.T, url string, opts ...client.Option) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Subscribe(ctx, "lobby"); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	return c
}

// refused checks that the edge turns a token away with 401 and reason.
func refused(t *testing.T, url, token, reason string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, client.WithToken(token))
	if err == nil {
		c.Close()
		t.Fatalf("token accepted; want 401 %q", reason)
	}
	var he *client.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized || !strings.Contains(he.Body, reason) {
		t.Fatalf("got %v; want 401 %q", err, reason)
	}
}

// accepted reports whether the edge upgrades a connection with token.
func accepted(t *testing.T, url, token string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, client.WithToken(token))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// stillServing proves that none of conns was dropped: each answers a ping,
// and each receives a message published to lobby now, by pub.
func stillServing(t *testing.T, pub *client.Client, conns ...*client.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := pub.Publish(ctx, "lobby", id, map[string]string{"text": "still there?"}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	for i, c := range conns {
		if err := c.Ping(ctx); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	wait:
		for {
			select {
			case m := <-c.Messages():
				if m.MsgID == id {
					break wait
				}
			case <-c.Done():
				t.Fatalf("connection %d was dropped: %v", i, c.Err())
			case <-ctx.Done():
				t.Fatalf("connection %d: no message %s", i, id)
			}
		}
	}
}

// metric reads one series of the edge's /metrics ("name" or
// `name{label="v"}`); -1 when absent.
func metric(t *testing.T, hc *http.Client, base, series string) float64 {
	t.Helper()
	resp, err := hc.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

// The rotation an identity provider does (old key; old and new; new only),
// an unknown kid, and the JWKS endpoint down or empty, through a real edge
// and real clients: every connection made along the way stays up and
// delivering; only new connections see the key set change.
func TestJWKSRotationKeepsConnections(t *testing.T) {
	idp := authtest.NewJWKS(t)
	k1, k2 := authtest.NewES256(t, "k1"), authtest.NewEd25519(t, "k2")
	stranger := authtest.NewES256(t, "k9")
	idp.Serve(k1)
	addr := startEdge(t, "--jwt-jwks-url", idp.URL(), "--jwt-jwks-refresh", "1h", "--jwt-jwks-min-refresh", "50ms")
	url := "ws://" + addr + "/ws"
	var conns []*client.Client
	with := func(k *authtest.Key, user string) *client.Client {
		c := connect(t, url, client.WithToken(k.Token(t, user, "lobby")))
		conns = append(conns, c)
		return c
	}

	with(k1, "alice")
	refused(t, url, k2.Token(t, "bob", "lobby"), "unknown key")

	idp.Serve(k1, k2) // the provider publishes its next key
	with(k2, "bob")   // an unknown kid: fetched at once
	with(k1, "carol")

	idp.Serve(k2) // and retires the old one
	refused(t, url, stranger.Token(t, "mallory", "lobby"), "unknown key")
	refused(t, url, k1.Token(t, "dave", "lobby"), "unknown key")
	erin := with(k2, "erin")
	stillServing(t, erin, conns...)

	idp.SetDown(true)
	refused(t, url, stranger.Token(t, "mallory", "lobby"), "unknown key")
	with(k2, "frank") // the last good set
	idp.ServeRaw([]byte(`{"keys":[]}`))
	refused(t, url, stranger.Token(t, "mallory", "lobby"), "unknown key")
	grace := with(k2, "grace")
	stillServing(t, grace, conns...)

	hc := http.DefaultClient
	base := "http://" + addr
	for series, want := range map[string]float64{
		`parley_edge_jwks_keys`:                            1,
		`parley_edge_jwks_refreshes_total{result="error"}`: 2,
	} {
		if got := metric(t, hc, base, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// Start, bob's unknown kid, then each of mallory's and dave's: 5 good
	// fetches before the endpoint failed.
	if got := metric(t, hc, base, `parley_edge_jwks_refreshes_total{result="ok"}`); got != 5 {
		t.Errorf("ok refreshes = %v, want 5", got)
	}
	if got := metric(t, hc, base, "parley_edge_jwks_last_success_timestamp_seconds"); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last success %v", got)
	}
	if got := metric(t, hc, base, "parley_edge_jwks_unknown_kid_total"); got < 4 {
		t.Errorf("unknown kids %v, want at least 4", got)
	}
}

func hsToken(t *testing.T, secret, user string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, authtest.Claims(user, "lobby")).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Without SIGHUP, a changed key file is picked up within --reload-interval.
func TestKeyFileReloadOnChange(t *testing.T) {
	pubFile := filepath.Join(t.TempDir(), "jwt.pem")
	p1, p2 := authtest.NewES256(t, ""), authtest.NewES256(t, "")
	certtest.WriteAtomic(t, pubFile, p1.PublicPEM(t))
	addr := startEdge(t, "--jwt-public-key", pubFile, "--reload-interval", "20ms")
	url := "ws://" + addr + "/ws"
	c1 := connect(t, url, client.WithToken(p1.Token(t, "alice", "lobby")))
	certtest.WriteAtomic(t, pubFile, p2.PublicPEM(t))
	natstest.Eventually(t, 10*time.Second, func() error {
		if !accepted(t, url, p2.Token(t, "bob", "lobby")) || accepted(t, url, p1.Token(t, "bob", "lobby")) {
			return errors.New("the changed key file was not reloaded")
		}
		return nil
	})
	c2 := connect(t, url, client.WithToken(p2.Token(t, "carol", "lobby")))
	stillServing(t, c2, c1)
}

// The edge serves wss://; its certificate is replaced on disk while
// clients are connected: they stay connected and delivering, and new
// connections get the new certificate.
func TestTLSCertificateReplacedWhileConnected(t *testing.T) {
	ca := certtest.NewCA(t, "parley test CA")
	_, certFile, keyFile := certtest.NewFiles(t, ca, "edge-one")
	addr := startEdge(t, "--insecure", "--tls-cert", certFile, "--tls-key", keyFile, "--reload-interval", "20ms")
	url := "wss://" + addr + "/ws"

	var old []*client.Client
	for _, user := range []string{"alice", "bob", "carol"} {
		var seen string
		old = append(old, connect(t, url, client.WithUser(user), client.WithDialer(dialer(ca, &seen))))
		if seen != "edge-one" {
			t.Fatalf("%s got certificate %q", user, seen)
		}
	}
	if c, err := client.Dial(t.Context(), "ws://"+addr+"/ws", client.WithUser("eve")); err == nil {
		c.Close()
		t.Fatal("plain ws:// accepted by a TLS edge")
	}

	two := certtest.Issue(t, ca, "edge-two", time.Now().Add(2*time.Hour))
	two.WriteFiles(t, certFile, keyFile)
	var fresh *client.Client
	natstest.Eventually(t, 10*time.Second, func() error {
		var seen string
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		c, err := client.Dial(ctx, url, client.WithUser("dave"), client.WithDialer(dialer(ca, &seen)))
		if err != nil {
			return err
		}
		if seen != "edge-two" {
			c.Close()
			return fmt.Errorf("new connection got %q", seen)
		}
		fresh = c
		return nil
	})
	t.Cleanup(func() { fresh.Close() })
	stillServing(t, fresh, old...)

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	base := "https://" + addr
	if got := metric(t, hc, base, "parley_edge_tls_cert_expiry_timestamp_seconds"); got != float64(two.Cert.NotAfter.Unix()) {
		t.Errorf("certificate expiry %v, want %d", got, two.Cert.NotAfter.Unix())
	}
	if got := metric(t, hc, base, `parley_edge_reloads_total{result="ok",what="tls_cert"}`); got < 1 {
		t.Errorf("tls reloads %v", got)
	}
}

// With --tls-cert the dev banner gives wss:// and https:// URLs.
func TestBannerWithTLS(t *testing.T) {
	_, certFile, keyFile := certtest.NewFiles(t, nil, "edge")
	o, err := parse([]string{"--tls-cert", certFile, "--tls-key", keyFile}, env(nil), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.loadTLS(); err != nil {
		t.Fatal(err)
	}
	o.devMode()
	var b strings.Builder
	o.banner(&b, "data/nats", "127.0.0.1:4222")
	for _, w := range []string{"wss://127.0.0.1:8080/ws?user=alice", "https://127.0.0.1:8080/metrics", "wscat -c 'wss://"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("banner lacks %q:\n%s", w, b.String())
		}
	}
	if strings.Contains(b.String(), "ws://") || strings.Contains(b.String(), "http://") {
		t.Errorf("banner of a TLS edge offers plain URLs:\n%s", b.String())
	}
}

// The tests from here on run child processes; in-process edges go above
// them. A signal to this process (SIGHUP, or SIGCHLD when a child ends)
// interrupts the epoll waits that the pollers of edges shut down earlier
// leave running, and an interrupted one waits again on its closed epoll
// fd's number, which a later edge's poller may have been given: it then
// takes that edge's readiness events, and connections hang.

// edgeProcessEnv carries the flags of the edge that TestEdgeProcess runs.
const edgeProcessEnv = "PARLEY_TEST_EDGE_PROCESS_ARGS"

// TestEdgeProcess is the edge process of startEdgeProcess: this test
// binary, run again with only this test and the flags in edgeProcessEnv. It
// serves until SIGTERM. Run directly it has nothing to do.
func TestEdgeProcess(t *testing.T) {
	raw := os.Getenv(edgeProcessEnv)
	if raw == "" {
		t.Skip("the edge process of startEdgeProcess, nothing to do alone")
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		t.Fatal(err)
	}
	ctx, stop := osignal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := runTo(ctx, args, env(nil), io.Discard); err != nil {
		t.Fatal(err)
	}
}

// startEdgeProcess runs an edge with args in a process of its own (on a
// NATS server of this one), so the test can signal it as an operator
// would. It is drained with SIGTERM when the test ends, and must exit 0.
func startEdgeProcess(t *testing.T, args ...string) (addr string, signal func(os.Signal)) {
	t.Helper()
	ns := natstest.StartJetStream(t)
	addr = freeAddr(t)
	flags, err := json.Marshal(append([]string{"--nats", ns.URL(), "--listen", addr, "--log-level", "warn", "--drain-timeout", "2s"}, args...))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEdgeProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), edgeProcessEnv+"="+string(flags))
	var out bytes.Buffer // read only after the process ended
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("edge process: %v\n%s", err, out.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("edge process still running 20s after SIGTERM:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr, func(s os.Signal) {
				if err := cmd.Process.Signal(s); err != nil {
					t.Fatal(err)
				}
			}
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("edge process ended before listening: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge process not listening on %s after 30s", addr)
		}
	}
}

// Key files hold old and new keys during a rotation and are re-read on
// SIGHUP (here the only trigger: --reload-interval 0), sent to a real edge
// process; a broken file or a weak secret is refused and the keys in use
// stay. Connections made with retired keys stay up.
func TestKeyFilesRotateOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	secretFile, pubFile := filepath.Join(dir, "jwt-secret"), filepath.Join(dir, "jwt.pem")
	s1, s2 := strings.Repeat("1", 32), strings.Repeat("2", 32)
	p1, p2 := authtest.NewES256(t, ""), authtest.NewEd25519(t, "")
	certtest.WriteAtomic(t, secretFile, []byte(s1+"\n"))
	certtest.WriteAtomic(t, pubFile, p1.PublicPEM(t))
	addr, signal := startEdgeProcess(t, "--jwt-secret-file", secretFile, "--jwt-public-key", pubFile, "--reload-interval", "0")
	url := "ws://" + addr + "/ws"
	c1 := connect(t, url, client.WithToken(hsToken(t, s1, "alice")))
	c2 := connect(t, url, client.WithToken(p1.Token(t, "bob", "lobby")))

	// Both keys in each file; nothing changes before the signal.
	certtest.WriteAtomic(t, secretFile, []byte(s1+"\n"+s2+"\n"))
	certtest.WriteAtomic(t, pubFile, append(p1.PublicPEM(t), p2.PublicPEM(t)...))
	refused(t, url, hsToken(t, s2, "carol"), "bad signature")
	signal(syscall.SIGHUP)
	natstest.Eventually(t, 10*time.Second, func() error {
		if !accepted(t, url, hsToken(t, s2, "carol")) || !accepted(t, url, p2.Token(t, "carol", "lobby")) {
			return errors.New("new keys not accepted after SIGHUP")
		}
		return nil
	})
	c3 := connect(t, url, client.WithToken(hsToken(t, s1, "dave")))

	// New keys only.
	certtest.WriteAtomic(t, secretFile, []byte(s2))
	certtest.WriteAtomic(t, pubFile, p2.PublicPEM(t))
	signal(syscall.SIGHUP)
	natstest.Eventually(t, 10*time.Second, func() error {
		if accepted(t, url, hsToken(t, s1, "erin")) || accepted(t, url, p1.Token(t, "erin", "lobby")) {
			return errors.New("old keys still accepted after SIGHUP")
		}
		return nil
	})

	// A broken public key file, then (with that file good again) a weak
	// secret: refused, keys kept.
	base := "http://" + addr
	for i, bad := range []func(){
		func() { certtest.WriteAtomic(t, pubFile, []byte("-----BEGIN PUBLIC KEY-----\ngarbage\n")) },
		func() {
			certtest.WriteAtomic(t, pubFile, p2.PublicPEM(t))
			certtest.WriteAtomic(t, secretFile, []byte(s2+"\nshort\n"))
		},
	} {
		bad()
		signal(syscall.SIGHUP)
		natstest.Eventually(t, 10*time.Second, func() error {
			if got := metric(t, http.DefaultClient, base, `parley_edge_reloads_total{result="error",what="jwt_keys"}`); got != float64(i+1) {
				return fmt.Errorf("%v failed reloads, want %d", got, i+1)
			}
			return nil
		})
		if !accepted(t, url, hsToken(t, s2, "frank")) || !accepted(t, url, p2.Token(t, "frank", "lobby")) {
			t.Fatalf("bad file %d: the keys in use were dropped", i)
		}
	}
	if got := metric(t, http.DefaultClient, base, `parley_edge_reloads_total{result="ok",what="jwt_keys"}`); got != 2 {
		t.Errorf("%v good reloads, want 2", got)
	}
	c4 := connect(t, url, client.WithToken(hsToken(t, s2, "grace")))
	stillServing(t, c4, c1, c2, c3)
}

// The new flags are checked like the others: exit 2, one line naming the
// flag, before anything starts.
func TestRotationFlagsExitTwo(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := certtest.Issue(t, nil, "edge", time.Now().Add(time.Hour))
	expired := certtest.Issue(t, nil, "old", time.Now().Add(-time.Minute))
	cert, key := file("tls.crt", good.CertPEM), file("tls.key", good.KeyPEM)
	otherKey := file("other.key", certtest.Issue(t, nil, "x", time.Now().Add(time.Hour)).KeyPEM)
	oldCert, oldKey := file("old.crt", expired.CertPEM), file("old.key", expired.KeyPEM)
	garbage := file("garbage", []byte("garbage\n"))
	twoSecrets := file("secrets", []byte(strings.Repeat("k", 32)+"\nshort\n"))
	privPEM := file("priv.pem", good.KeyPEM)
	configtest.CheckUsageErrors(t, "edge", []configtest.Case{
		{Name: "url", Args: []string{"--jwt-jwks-url", "ftp://id.example.com/jwks"}, Want: []string{"--jwt-jwks-url"}},
		{Name: "url", Args: []string{"--jwt-jwks-url", "id.example.com/jwks"}, Want: []string{"--jwt-jwks-url"}},
		{Name: "url", Args: []string{"--jwt-jwks-url", "https://user:pw@id.example.com/jwks"}, Want: []string{"--jwt-jwks-url"}},
		{Name: "url", Env: map[string]string{"PARLEY_JWT_JWKS_URL": "https://"}, Want: []string{"--jwt-jwks-url"}},
		{Name: "zero", Args: []string{"--jwt-jwks-refresh", "0s"}, Want: []string{"--jwt-jwks-refresh"}},
		{Name: "negative", Args: []string{"--jwt-jwks-min-refresh", "-1s"}, Want: []string{"--jwt-jwks-min-refresh"}},
		{Name: "negative", Args: []string{"--reload-interval", "-1s"}, Want: []string{"--reload-interval"}},
		{Name: "unitless-duration", Args: []string{"--reload-interval", "10"}, Want: []string{"--reload-interval", "unit"}},
		{Name: "conflict", Args: []string{"--tls-cert", cert}, Want: []string{"--tls-cert", "--tls-key"}},
		{Name: "conflict", Args: []string{"--tls-key", key}, Want: []string{"--tls-cert", "--tls-key"}},
		{Name: "file", Args: []string{"--tls-cert", filepath.Join(dir, "missing"), "--tls-key", key}, Want: []string{"--tls-cert"}},
		{Name: "file", Args: []string{"--tls-cert", cert, "--tls-key", filepath.Join(dir, "missing")}, Want: []string{"--tls-key"}},
		{Name: "file", Args: []string{"--tls-cert", garbage, "--tls-key", key}, Want: []string{"--tls-cert"}},
		{Name: "file", Args: []string{"--tls-cert", cert, "--tls-key", otherKey}, Want: []string{"--tls-cert", "--tls-key"}},
		{Name: "file", Args: []string{"--tls-cert", oldCert, "--tls-key", oldKey}, Want: []string{"--tls-cert", "expired"}},
		{Name: "weak-secret", Args: []string{"--jwt-secret-file", twoSecrets}, Want: []string{"--jwt-secret-file", "secret 2 of 2", "32"}},
		{Name: "file", Args: []string{"--jwt-public-key", privPEM}, Want: []string{"--jwt-public-key", "public key instead"}},
	})
}
