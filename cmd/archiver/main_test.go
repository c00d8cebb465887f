package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/archive"
	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

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
