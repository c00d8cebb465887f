package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/archive"
	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/config/configtest"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

func TestMain(m *testing.M) {
	configtest.MaybeMain(main)
	os.Exit(m.Run())
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParse(t *testing.T) {
	o, err := parse([]string{"--nats", "nats://n:4222", "--batch", "9"}, env(map[string]string{
		"PARLEY_BATCH": "7", "PARLEY_STORE": "postgres", "PARLEY_POSTGRES_DSN": "postgres://p@db/parley", "PARLEY_ACK_WAIT": "45s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if o.archive.Batch != 9 || o.store.Kind != "postgres" || o.store.PostgresDSN != "postgres://p@db/parley" ||
		o.archive.Consumer.AckWait != 45*time.Second || o.nats.URLs != "nats://n:4222" {
		t.Fatalf("options %+v", o)
	}
	for _, bad := range [][]string{
		{},                                     // no --nats
		{"--nats", "x", "--store", "mysql"},    // unknown store
		{"--nats", "x", "--store", "postgres"}, // no DSN
		{"--nats", "x", "--batch", "0"},        // no batch
		{"--nats", "x", "--batch", "600", "--max-ack-pending", "500"},
		{"--nats", "x", "--history-subject", "a.*"},
		{"--nats", "x", "--history-subject", "a..b"},
		{"--nats", "x", "extra"},
	} {
		if _, err := parse(bad, env(nil)); !errors.Is(err, config.ErrUsage) {
			t.Fatalf("%q: got %v, want a usage error", bad, err)
		}
	}
}

// Every class of invalid flag value makes the real binary exit 2 with one
// line naming the flag (a valid command line would try to reach NATS on
// port 1 and exit 1, which fails the case too).
func TestBadFlagsExitTwoWithOneLine(t *testing.T) {
	nats := func(args ...string) []string { return append([]string{"--nats", "nats://127.0.0.1:1"}, args...) }
	configtest.CheckUsageErrors(t, "archiver", []configtest.Case{
		{Name: "required", Args: nil, Want: []string{"--nats"}},
		{Name: "required", Args: []string{"provision"}, Want: []string{"--nats"}},
		{Name: "otel-exporter", Args: nats(), Env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, Want: []string{"OTEL_TRACES_EXPORTER", "otlp"}},
		{Name: "otel-protocol", Args: nats(), Env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, Want: []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"}},
		{Name: "negative", Args: nats("--batch", "-5"), Want: []string{"--batch"}},
		{Name: "negative", Args: nats("--ack-wait", "-1s"), Want: []string{"--ack-wait"}},
		{Name: "zero", Args: nats("--max-ack-pending", "0"), Want: []string{"--max-ack-pending"}},
		{Name: "zero", Args: nats("--history-max", "0"), Want: []string{"--history-max"}},
		{Name: "zero", Args: nats("--fetch-wait", "0s"), Want: []string{"--fetch-wait"}},
		{Name: "unitless-duration", Args: nats("--fetch-wait", "2"), Want: []string{"--fetch-wait", "unit"}},
		{Name: "unitless-duration", Args: nats(), Env: map[string]string{"PARLEY_ACK_WAIT": "30"}, Want: []string{"PARLEY_ACK_WAIT", "--ack-wait"}},
		{Name: "not-a-number", Args: nats("--batch", "1e3"), Want: []string{"--batch"}},
		{Name: "unknown-flag", Args: nats("--sqlite", "x.db"), Want: []string{"--sqlite"}},
		{Name: "stray-argument", Args: nats("extra"), Want: []string{`"extra"`}},
		{Name: "address", Args: nats("--listen", ""), Want: []string{"--listen"}},
		{Name: "enum", Args: nats("--store", "mysql"), Want: []string{"--store"}},
		{Name: "enum", Args: nats("--log-format", "xml"), Want: []string{"--log-format"}},
		{Name: "store", Args: nats("--sqlite-path", ""), Want: []string{"--sqlite-path"}},
		{Name: "store", Args: nats("--store", "postgres"), Want: []string{"--postgres-dsn"}},
		{Name: "store", Args: nats("--store", "postgres", "--postgres-dsn", "postgres://db:99999999/x"), Want: []string{"--postgres-dsn"}},
		{Name: "subject", Args: nats("--history-subject", "a.>"), Want: []string{"--history-subject"}},
		{Name: "conflict", Args: nats("--batch", "600", "--max-ack-pending", "500"), Want: []string{"--batch", "--max-ack-pending"}},
		{Name: "size", Args: nats("--memory-limit", "12 parsecs"), Want: []string{"--memory-limit"}},
		{Name: "conflict", Args: nats("--retry-max", "10ms"), Want: []string{"--retry-max"}},
		{Name: "conflict", Args: nats("--nats-tls-key", "/dev/null"), Want: []string{"--nats-tls-cert", "--nats-tls-key"}},
	})
}

// --help exits 0 and says what the binary really does with an empty --nats.
func TestHelp(t *testing.T) {
	r := configtest.Run(t, []string{"--help"}, nil)
	for _, w := range []string{"--nats is required", "archiver provision", "PARLEY_LOG_LEVEL", "127.0.0.1:8082", "relative to the working directory"} {
		if r.Code != 0 || !strings.Contains(r.Stdout, w) {
			t.Errorf("archiver --help: exit %d, lacks %q:\n%s", r.Code, w, r.Stdout)
		}
	}
	if strings.Contains(r.Stdout, "embedded") {
		t.Errorf("archiver --help promises an embedded server:\n%s", r.Stdout)
	}
}

func TestRunArchivesAndServes(t *testing.T) {
	srv := natstest.StartJetStream(t)
	js := natstest.JetStream(t, srv.URL())
	if _, err := pjs.Provision(t.Context(), js, pjs.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(t.TempDir(), "archive.db")
	ctx, cancel := context.WithCancel(t.Context())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--nats", srv.URL(), "--listen", "127.0.0.1:0", "--log-level", "error", "--fetch-wait", "100ms"},
			env(map[string]string{"PARLEY_SQLITE_PATH": dbPath}), func(a string) { addr <- a })
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		t.Fatalf("run ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not listening")
	}
	for i := range 10 {
		if _, err := js.Publish(t.Context(), "chat.room.lobby", fmt.Appendf(nil, `{"from":"svc","data":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	store, err := archive.OpenSQLite(t.Context(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	natstest.Eventually(t, 10*time.Second, func() error {
		if n, _, err := store.Count(t.Context()); err != nil || n != 10 {
			return fmt.Errorf("%d rows, err %v", n, err)
		}
		if code, _ := httpGet(t, base+"/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz %d", code)
		}
		if _, body := httpGet(t, base+"/metrics"); !strings.Contains(body, "parley_archiver_messages_total 10") {
			return errors.New("metrics do not count 10 archived messages yet")
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop")
	}
}

func TestProvisionCommand(t *testing.T) {
	srv := natstest.StartJetStream(t)
	js := natstest.JetStream(t, srv.URL())
	if _, err := pjs.Provision(t.Context(), js, pjs.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	if err := run(t.Context(), []string{"provision", "--nats", srv.URL(), "--max-ack-pending", "2000"}, env(nil), nil); err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(t.Context(), pjs.ChatStream, pjs.ArchiveConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.MaxAckPending; got != 2000 {
		t.Fatalf("max ack pending %d", got)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
