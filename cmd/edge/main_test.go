package main

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/config/configtest"
	"github.com/parley-mesh/parley/internal/edgetest"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

var quiet = slog.New(slog.DiscardHandler)

func TestParseLimitsAndProxies(t *testing.T) {
	o, err := parse([]string{"--max-connections-per-ip", "50", "--trusted-proxies", "10.0.0.0/8, 192.0.2.1,::1", "--allowed-hosts", "chat.test, dev.test"},
		env(map[string]string{"PARLEY_MAX_CONNECTIONS_PER_USER": "7", "PARLEY_HTTP_IDLE_TIMEOUT": "45s"}), false)
	if err != nil {
		t.Fatal(err)
	}
	c := o.edge
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("::1/128")}
	if c.MaxConnsPerUser != 7 || c.MaxConnsPerIP != 50 || !slices.Equal(c.TrustedProxies, want) ||
		!slices.Equal(c.AllowedHosts, []string{"chat.test", "dev.test"}) || c.HTTPIdleTimeout.String() != "45s" {
		t.Fatalf("config %+v", c)
	}
	o, err = parse([]string{"--allowed-origins", "http://localhost:3000/, capacitor://localhost,*"}, env(nil), false)
	if err != nil || !slices.Equal(o.edge.AllowedOrigins, []string{"http://localhost:3000/", "capacitor://localhost", "*"}) {
		t.Fatalf("origins: %v %q", err, o.edge.AllowedOrigins)
	}
	if o, err := parse(nil, env(nil), false); err != nil || o.edge.MaxConnsPerUser != 100 || o.edge.MaxConnsPerIP != 0 {
		t.Fatalf("defaults: %v %+v", err, o)
	}
	for _, bad := range [][]string{
		{"--trusted-proxies", "10.0.0.0/33"},
		{"--trusted-proxies", "proxy.internal"},
		{"--max-connections-per-user", "-1"},
	} {
		if _, err := parse(bad, env(nil), false); !errors.Is(err, config.ErrUsage) {
			t.Errorf("%q: got %v, want a usage error", bad, err)
		}
	}
}

// An insecure edge, or the dev mesh's NATS (no authentication at all), on
// an address other machines reach is a usage error (exit status 2) that
// names the flag to override it, and nothing starts.
func TestInsecureListenBeyondLoopbackRefused(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--listen", "0.0.0.0:0"},      // dev mode without keys: insecure
		{"--listen", ":8080"},          // every interface
		{"--listen", "192.0.2.1:8080"}, // a LAN address
		{"--nats", "nats://127.0.0.1:1", "--insecure", "--listen", "[::]:0"}, // explicit insecure
		{"--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cret", "--nats-listen", "0.0.0.0:4222"},
	} {
		err := run(t.Context(), append(args, "--data", dir, "--log-level", "error"), env(nil))
		if !errors.Is(err, config.ErrUsage) || !strings.Contains(err.Error(), "--insecure-listen-any") {
			t.Errorf("%q: got %v, want a usage error naming --insecure-listen-any", args, err)
		}
	}
	// Allowed: loopback, a secure edge anywhere, or the operator's say-so
	// (also from the environment, as the Helm chart would give it).
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"--listen", "127.0.0.1:8080"}, nil},
		{[]string{"--listen", "localhost:8080"}, nil},
		{[]string{"--listen", "[::1]:8080"}, nil},
		{[]string{"--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cret", "--listen", "0.0.0.0:8080"}, nil},
		{[]string{"--nats", "nats://n:4222", "--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cret", "--listen", ":8080"}, nil},
		{[]string{"--listen", "0.0.0.0:8080", "--nats-listen", "0.0.0.0:4222", "--insecure-listen-any"}, nil},
		{[]string{"--nats", "nats://n:4222", "--insecure", "--listen", ":8080"}, map[string]string{"PARLEY_INSECURE_LISTEN_ANY": "true"}},
	} {
		o, err := parse(tc.args, env(tc.env), false)
		if err != nil {
			t.Fatal(err)
		}
		if err := o.loadAuth(quiet); err != nil {
			t.Fatal(err)
		}
		if err := o.checkExposure(o.nats.URLs == ""); err != nil {
			t.Errorf("%q: %v", tc.args, err)
		}
	}
}

func TestBannerSaysHowToConnect(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		want, lack []string
	}{
		{nil, []string{"ws://127.0.0.1:8080/ws?user=alice", "any ?user= is accepted"}, []string{"JWT"}},
		{[]string{"--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cret"}, []string{"?token=<JWT>", "?user= is refused", "Authorization: Bearer"}, []string{"any ?user= is accepted", "user=alice"}},
		{[]string{"--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cret", "--insecure"}, []string{"any ?user= is accepted, and JWTs"}, nil},
		{[]string{"--listen", ":9090", "--insecure-listen-any"}, []string{"ws://127.0.0.1:9090/ws"}, []string{"ws://:9090"}},
	} {
		o, err := parse(tc.args, env(nil), false)
		if err != nil {
			t.Fatal(err)
		}
		if err := o.loadAuth(quiet); err != nil {
			t.Fatal(err)
		}
		o.devMode() // as startEmbedded does
		var b strings.Builder
		o.banner(&b, "data/nats", "127.0.0.1:4222")
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%q: banner lacks %q:\n%s", tc.args, w, b.String())
			}
		}
		for _, w := range tc.lack {
			if strings.Contains(b.String(), w) {
				t.Errorf("%q: banner says %q:\n%s", tc.args, w, b.String())
			}
		}
	}
}

func TestMain(m *testing.M) {
	configtest.MaybeMain(main)
	os.Exit(m.Run())
}

// Every class of invalid flag value makes the real binary exit 2 with one
// line naming the flag, before anything starts (a valid command line here
// would start a dev mesh: a case that stops being refused hangs until Run's
// timeout instead of passing).
func TestBadFlagsExitTwoWithOneLine(t *testing.T) {
	dir := t.TempDir()
	weak := filepath.Join(dir, "weak")
	garbage := filepath.Join(dir, "garbage.pem")
	cert := filepath.Join(dir, "cert.pem")
	for _, f := range []string{weak, garbage, cert} {
		if err := os.WriteFile(f, []byte("short\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	nats := []string{"--nats", "nats://127.0.0.1:1"}
	secret := []string{"--jwt-secret", strings.Repeat("k", 32)}
	configtest.CheckUsageErrors(t, "edge", []configtest.Case{
		{Name: "negative", Args: []string{"--max-frame-bytes", "-5"}, Want: []string{"--max-frame-bytes"}},
		{Name: "otel-exporter", Args: nil, Env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, Want: []string{"OTEL_TRACES_EXPORTER", "otlp"}},
		{Name: "otel-protocol", Args: nil, Env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, Want: []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"}},
		{Name: "negative", Args: []string{"--max-connections", "-1"}, Want: []string{"--max-connections"}},
		{Name: "negative", Args: []string{"--stream-max-bytes", "-1"}, Want: []string{"--stream-max-bytes"}},
		{Name: "negative", Args: []string{"--write-delay", "-1ms"}, Want: []string{"--write-delay"}},
		{Name: "negative", Args: []string{"--jwt-leeway", "-1s"}, Want: []string{"--jwt-leeway"}},
		{Name: "zero", Args: []string{"--max-subscriptions", "0"}, Want: []string{"--max-subscriptions"}},
		{Name: "zero", Args: []string{"--request-rate", "0"}, Want: []string{"--request-rate"}},
		{Name: "zero", Args: []string{"--room-cache-bytes", "0"}, Want: []string{"--room-cache-bytes"}},
		{Name: "zero", Args: []string{"--ping-interval", "0s"}, Want: []string{"--ping-interval"}},
		{Name: "zero", Args: []string{"--stream-replicas", "0"}, Want: []string{"--stream-replicas"}},
		{Name: "zero", Args: []string{"--stream-duplicates", "0s"}, Want: []string{"--stream-duplicates"}},
		{Name: "zero", Args: []string{"--max-history"}, Env: map[string]string{"PARLEY_MAX_HISTORY": "0"}, Want: []string{"--max-history"}},
		{Name: "range", Args: []string{"--stream-replicas", "7"}, Want: []string{"--stream-replicas"}},
		{Name: "not-finite", Args: []string{"--publish-rate", "NaN"}, Want: []string{"--publish-rate"}},
		{Name: "unitless-duration", Args: []string{"--read-timeout", "60"}, Want: []string{"--read-timeout", "unit"}},
		{Name: "unitless-duration", Env: map[string]string{"PARLEY_DRAIN_TIMEOUT": "20"}, Want: []string{"PARLEY_DRAIN_TIMEOUT", "--drain-timeout", "unit"}},
		{Name: "not-a-number", Args: []string{"--max-queued-bytes", "4MiB"}, Want: []string{"--max-queued-bytes"}},
		{Name: "not-a-bool", Args: []string{"--insecure=maybe"}, Want: []string{"--insecure"}},
		{Name: "unknown-flag", Args: []string{"--max-frames", "1"}, Want: []string{"--max-frames"}},
		{Name: "missing-value", Args: []string{"--listen"}, Want: []string{"--listen"}},
		{Name: "stray-argument", Args: []string{"serve"}, Want: []string{`"serve"`}},
		{Name: "address", Args: []string{"--listen", "8080"}, Want: []string{"--listen"}},
		{Name: "address", Args: []string{"--nats-listen", "127.0.0.1:99999"}, Want: []string{"--nats-listen"}},
		{Name: "address", Args: []string{"--nats", "http://nats:4222"}, Want: []string{"--nats"}},
		{Name: "list", Args: []string{"--allowed-origins", "localhost:3000"}, Want: []string{"--allowed-origins"}},
		{Name: "list", Args: []string{"--allowed-origins", "http://localhost:3000/app"}, Want: []string{"--allowed-origins"}},
		{Name: "list", Args: []string{"--allowed-origins", "https://chat.test,null"}, Want: []string{"--allowed-origins", "null"}},
		{Name: "list", Args: []string{"--allowed-hosts", "chat.test:8080"}, Want: []string{"--allowed-hosts"}},
		{Name: "list", Args: []string{"--trusted-proxies", "10.0.0.0/33"}, Want: []string{"--trusted-proxies"}},
		{Name: "name", Args: []string{"--edge-id", "edge.1"}, Want: []string{"--edge-id"}},
		{Name: "enum", Args: []string{"--log-level", "loud"}, Want: []string{"--log-level"}},
		{Name: "enum", Args: []string{"--log-format", "xml"}, Want: []string{"--log-format"}},
		{Name: "size", Args: []string{"--memory-limit", "lots"}, Want: []string{"--memory-limit"}},
		{Name: "file", Args: []string{"--jwt-public-key", filepath.Join(dir, "missing.pem")}, Want: []string{"--jwt-public-key"}},
		{Name: "file", Args: []string{"--jwt-public-key", garbage}, Want: []string{"--jwt-public-key"}},
		{Name: "file", Args: append(slices.Clone(nats), "--insecure", "--nats-creds", filepath.Join(dir, "missing.creds")), Want: []string{"--nats-creds"}},
		{Name: "weak-secret", Args: []string{"--jwt-secret", "s3cret"}, Want: []string{"--jwt-secret", "32"}},
		{Name: "weak-secret", Args: []string{"--jwt-secret-file", weak}, Want: []string{"--jwt-secret-file", "32"}},
		{Name: "conflict", Args: []string{"--stream-max-age", "1m"}, Want: []string{"--stream-max-age", "--stream-duplicates"}},
		{Name: "conflict", Args: []string{"--max-frame-bytes", "2000000"}, Want: []string{"--max-frame-bytes", "--hard-frame-bytes"}},
		{Name: "conflict", Args: []string{"--read-timeout", "20s"}, Want: []string{"--read-timeout", "--ping-interval"}},
		{Name: "conflict", Args: append(slices.Clone(secret), "--jwt-secret-file", weak), Want: []string{"--jwt-secret", "--jwt-secret-file"}},
		{Name: "conflict", Args: append(slices.Clone(nats), "--insecure", "--nats-tls-cert", cert), Want: []string{"--nats-tls-cert", "--nats-tls-key"}},
		{Name: "conflict", Args: []string{"--listen", "0.0.0.0:8080"}, Want: []string{"--listen", "--insecure-listen-any"}},
		{Name: "no-auth", Args: nats, Want: []string{"--jwt-secret", "--insecure"}},
		{Name: "provision", Args: []string{"provision"}, Want: []string{"--nats"}},
		{Name: "provision", Args: append([]string{"provision", "--listen", ":8080"}, nats...), Want: []string{"--listen"}},
		{Name: "provision", Args: append([]string{"provision", "--stream-max-age", "1m"}, nats...), Want: []string{"--stream-max-age", "--stream-duplicates"}},
		{Name: "provision", Args: append([]string{"provision", "--stream-replicas", "-1"}, nats...), Want: []string{"--stream-replicas"}},
	})
}

// --help exits 0 with the usage on stdout: the top level names the
// provision subcommand and the PARLEY_* variables; provision's lists only
// the flags provision reads.
func TestHelp(t *testing.T) {
	r := configtest.Run(t, []string{"--help"}, nil)
	for _, w := range []string{"edge provision [flags]", "PARLEY_LOG_LEVEL", "-max-frame-bytes int", "-read-timeout duration", "-nats string"} {
		if r.Code != 0 || !strings.Contains(r.Stdout, w) {
			t.Errorf("edge --help: exit %d, lacks %q:\n%s", r.Code, w, r.Stdout)
		}
	}
	r = configtest.Run(t, []string{"provision", "--help"}, nil)
	for _, w := range []string{"edge provision --nats URL", "PARLEY_", "-stream-max-age duration", "-nats-creds string"} {
		if r.Code != 0 || !strings.Contains(r.Stdout, w) {
			t.Errorf("edge provision --help: exit %d, lacks %q:\n%s", r.Code, w, r.Stdout)
		}
	}
	for _, w := range []string{"-listen", "-jwt-secret", "-max-frame-bytes", "-insecure", "embedded server"} {
		if strings.Contains(r.Stdout, w) {
			t.Errorf("edge provision --help lists %q, which provision does not read:\n%s", w, r.Stdout)
		}
	}
}

// A short secret is refused outside insecure mode (above) and only warned
// about with --insecure; a secret together with a public key is accepted
// (tokens signed with either pass, for a key migration) with a warning.
func TestSecretWarnings(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pemFile := filepath.Join(t.TempDir(), "jwt.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		warn string
	}{
		{[]string{"--insecure", "--jwt-secret", "s3cret"}, "weak JWT secret"},
		{[]string{"--jwt-secret", strings.Repeat("k", 32), "--jwt-public-key", pemFile}, "both configured"},
		{[]string{"--jwt-secret", strings.Repeat("k", 32)}, ""},
	} {
		o, err := parse(tc.args, env(nil), false)
		if err != nil {
			t.Fatal(err)
		}
		var logs strings.Builder
		if err := o.loadAuth(slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if got := logs.String(); tc.warn == "" && got != "" || !strings.Contains(got, tc.warn) {
			t.Errorf("%q: logged %q, want %q", tc.args, got, tc.warn)
		}
	}
}

// The dev banner tells the mode the edge is really in: a real dev mesh
// starts, and a client connects the way its banner says, while the way it
// says is refused is refused (HTTP 401).
func TestDevBannerMatchesTheEdge(t *testing.T) {
	secret := strings.Repeat("k", 32)
	token := func(t *testing.T) string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": "bob", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix(),
		}).SignedString([]byte(secret))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for _, tc := range []struct {
		name            string
		args            []string
		says            string
		userOK, tokenOK bool
	}{
		{"insecure", nil, "any ?user= is accepted", true, false},
		{"secure", []string{"--jwt-secret", secret}, "?user= is refused", false, true},
		{"insecure-with-key", []string{"--jwt-secret", secret, "--insecure"}, "any ?user= is accepted, and JWTs", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			var banner edgetest.LogBuffer
			ctx, cancel := context.WithCancel(t.Context())
			var runErr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				runErr = runTo(ctx, append(tc.args, "--listen", addr, "--nats-listen", "127.0.0.1:0", "--data", t.TempDir(),
					"--log-level", "error", "--drain-timeout", "2s"), env(nil), &banner)
			}()
			defer func() {
				cancel()
				<-done
				if runErr != nil {
					t.Errorf("run: %v", runErr)
				}
			}()
			url := "ws://" + addr + "/ws"
			user := dialStatus(t, url+"?user=alice", nil, done)
			tok := dialStatus(t, url, http.Header{"Authorization": {"Bearer " + token(t)}}, done)
			b := banner.String()
			if !strings.Contains(b, tc.says) || !strings.Contains(b, "ws://"+addr+"/ws") {
				t.Errorf("banner lacks %q or the address %s:\n%s", tc.says, addr, b)
			}
			if got := user == http.StatusSwitchingProtocols; got != tc.userOK {
				t.Errorf("?user=alice: HTTP %d; banner:\n%s", user, b)
			}
			if got := tok == http.StatusSwitchingProtocols; got != tc.tokenOK {
				t.Errorf("Bearer token: HTTP %d; banner:\n%s", tok, b)
			}
			if !tc.userOK && user != http.StatusUnauthorized {
				t.Errorf("?user=alice on a secure edge: HTTP %d, want 401", user)
			}
			if suggests := strings.Contains(b, "?user=alice"); suggests != tc.userOK {
				t.Errorf("banner suggests ?user=alice: %v, but ?user= works: %v:\n%s", suggests, tc.userOK, b)
			}
		})
	}
}

// freeAddr is a loopback address with a port free a moment ago: the banner
// is printed before the edge listens, so --listen needs a real port.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// dialStatus dials until the edge answers and returns the HTTP status of
// the upgrade (101 when it succeeded).
func dialStatus(t *testing.T, url string, h http.Header, done <-chan struct{}) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, resp, err := websocket.DefaultDialer.DialContext(t.Context(), url, h)
		if err == nil {
			c.Close()
			return http.StatusSwitchingProtocols
		}
		if resp != nil {
			return resp.StatusCode
		}
		select {
		case <-done:
			t.Fatal("run ended before the edge answered")
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", url, err)
		}
	}
}
