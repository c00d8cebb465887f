package archive

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// postgresEnv names the DSN of a PostgreSQL the tests may create schemas in.
const postgresEnv = "PARLEY_TEST_POSTGRES_DSN"

// storeKind is one store under test, opened fresh for each test.
type storeKind struct {
	name string
	open func(t testing.TB) (Store, testStore)
}

// testStore is what tests do to a store behind the archiver's back.
type testStore struct {
	// exec runs SQL on the store's database (same schema).
	exec func(t testing.TB, sql string)
}

var storeKinds = []storeKind{
	{"sqlite", openTestSQLite},
	{"postgres", openTestPostgres},
}

// forEachStore runs f as a subtest per store; the PostgreSQL one skips,
// saying so, when no PostgreSQL is configured.
func forEachStore(t *testing.T, f func(t *testing.T, k storeKind)) {
	for _, k := range storeKinds {
		t.Run(k.name, func(t *testing.T) { f(t, k) })
	}
}

func openTestSQLite(t testing.TB) (Store, testStore) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "archive.db")
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, testStore{exec: func(t testing.TB, q string) {
		t.Helper()
		if _, err := s.db.ExecContext(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}}
}

// postgresDSN is the test database's DSN. Without one the test is skipped,
// saying so and how to run it, except in CI (CI=true), where a skipped
// PostgreSQL test would be an untested promise: there it fails.
func postgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(postgresEnv)
	if dsn != "" {
		return dsn
	}
	msg := fmt.Sprintf("PostgreSQL absent: %s is not set, so this PostgreSQL test is NOT run "+
		"(bash .ci/run starts a throwaway PostgreSQL and sets it; or "+
		"%s='postgres://USER:PASSWORD@127.0.0.1:5432/DATABASE?sslmode=disable' go test -race ./internal/archive)",
		postgresEnv, postgresEnv)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// openTestPostgres gives each test its own schema in the configured
// database, dropped at cleanup, so tests (and packages) never share rows.
func openTestPostgres(t testing.TB) (Store, testStore) {
	t.Helper()
	dsn := postgresDSN(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("%s is set but PostgreSQL is unreachable: %v", postgresEnv, err)
	}
	t.Cleanup(func() { admin.Close(context.Background()) })
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "parley_test_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })
	s, err := OpenPostgres(ctx, withSearchPath(t, dsn, schema))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, testStore{exec: func(t testing.TB, q string) {
		t.Helper()
		if _, err := admin.Exec(context.Background(), "SET search_path TO "+schema+"; "+q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}}
}

func withSearchPath(t testing.TB, dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("%s: %v", postgresEnv, err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// mesh is an embedded JetStream server with the chat stream provisioned.
type mesh struct {
	srv  *natstest.Server
	js   jetstream.JetStream
	sent int // messages published so far: makes every msg id unique
}

func newMesh(t testing.TB, o pjs.StreamOptions) *mesh {
	t.Helper()
	srv := natstest.StartJetStream(t)
	js := natstest.JetStream(t, srv.URL())
	if _, err := pjs.Provision(t.Context(), js, o); err != nil {
		t.Fatal(err)
	}
	return &mesh{srv: srv, js: js}
}

// publish stores n messages round-robin over subjects (message i of the
// mesh goes to subjects[i%len(subjects)]) and returns their
// sequences in order.
func (m *mesh) publish(t testing.TB, n int, subjects ...string) []uint64 {
	t.Helper()
	seqs := make([]uint64, 0, n)
	// In chunks: the async publisher stalls beyond its in-flight bound.
	for len(seqs) < n {
		futures := make([]jetstream.PubAckFuture, 0, 1000)
		for range min(1000, n-len(seqs)) {
			i := m.sent
			m.sent++
			subj := subjects[i%len(subjects)]
			msg := nats.NewMsg(subj)
			msg.Data = fmt.Appendf(nil, `{"from":"svc","data":{"i":%d}}`, i)
			msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("svc:%s:%d", subj, i))
			f, err := m.js.PublishMsgAsync(msg)
			if err != nil {
				t.Fatal(err)
			}
			futures = append(futures, f)
		}
		for i, f := range futures {
			select {
			case ack := <-f.Ok():
				seqs = append(seqs, ack.Sequence)
			case err := <-f.Err():
				t.Fatalf("publish %d: %v", i, err)
			case <-time.After(10 * time.Second):
				t.Fatalf("publish %d: no ack", i)
			}
		}
	}
	return seqs
}

// testConfig is fast: short waits and backoffs, a short AckWait so a
// crashed batch is redelivered quickly.
func testConfig() Config {
	c := DefaultConfig()
	c.Batch = 50
	c.FetchWait = 200 * time.Millisecond
	c.RetryMin, c.RetryMax = 10*time.Millisecond, 200*time.Millisecond
	c.InfoInterval = 100 * time.Millisecond
	c.Consumer.AckWait = time.Second
	if testing.Verbose() {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return c
}

// running is an archiver running in the background on its own connection.
type running struct {
	*Archiver
	cancel context.CancelFunc
	nc     *nats.Conn
	done   chan struct{} // closed when Run returned
	err    error         // what Run returned, once done is closed
}

func startArchiver(t testing.TB, url string, store Store, mutate func(*Config), hook func() error) *running {
	t.Helper()
	cfg := testConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	nc := natstest.Connect(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	a, err := New(cfg, nc, store)
	if err != nil {
		t.Fatal(err)
	}
	a.afterCommit = hook
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Archiver: a, cancel: cancel, nc: nc, done: make(chan struct{})}
	go func() {
		r.err = a.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop ends the archiver and returns what Run returned. Its NATS
// connection closes too, as when an archiver process exits: a pull request
// it left waiting would otherwise take messages for it until AckWait, and a
// test that stops one archiver and starts another would race with that.
func (r *running) stop(t testing.TB) error {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		t.Error("archiver did not stop within 15s")
	}
	r.nc.Close()
	return r.err
}

// waitArchived waits until the store holds want messages and the consumer
// has nothing left to deliver or to have acked, then checks the count again
// (a late duplicate write would show here).
func waitArchived(t testing.TB, m *mesh, s Store, want int64) {
	t.Helper()
	ctx := t.Context()
	natstest.Eventually(t, 30*time.Second, func() error {
		n, _, err := s.Count(ctx)
		if err != nil {
			return err
		}
		c, err := m.js.Consumer(ctx, pjs.ChatStream, pjs.ArchiveConsumer)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if n != want || info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("rows %d of %d, consumer pending %d, ack pending %d", n, want, info.NumPending, info.NumAckPending)
		}
		return nil
	})
	if n, _, err := s.Count(ctx); err != nil || n != want {
		t.Fatalf("after catching up: %d rows (want %d), err %v", n, want, err)
	}
}

var errCrash = errors.New("simulated crash between commit and ack")

// metricValue reads a counter or gauge.
func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}
