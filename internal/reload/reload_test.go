package reload

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/parley-mesh/parley/internal/certtest"
	"github.com/parley-mesh/parley/internal/natstest"
)

func counter(t *testing.T, c *prometheus.CounterVec, labels ...string) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.WithLabelValues(labels...).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A target is reloaded when its file's contents change (also to the same
// size, within one mtime tick), not when nothing changed; a failed load is
// counted and not retried until the file changes again; a trigger reloads
// every target.
func TestWatcherReloadsOnChangeAndTrigger(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "key")
	certtest.WriteAtomic(t, file, []byte("one"))
	var loads atomic.Int64
	fail := atomic.Bool{}
	w := NewWatcher(5*time.Millisecond, nil, Target{Name: "k", Files: []string{file}, Load: func() error {
		loads.Add(1)
		if fail.Load() {
			return errors.New("broken")
		}
		return nil
	}})
	trigger := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() { w.Run(t.Context(), trigger); close(done) }()

	time.Sleep(30 * time.Millisecond) // several ticks, nothing changed
	if n := loads.Load(); n != 0 {
		t.Fatalf("%d loads without a change", n)
	}
	certtest.WriteAtomic(t, file, []byte("two")) // same size
	natstest.Eventually(t, 5*time.Second, func() error {
		if loads.Load() != 1 || counter(t, w.reloads, "k", "ok") != 1 {
			return errors.New("no reload after a change")
		}
		return nil
	})

	fail.Store(true)
	certtest.WriteAtomic(t, file, []byte("bad"))
	natstest.Eventually(t, 5*time.Second, func() error {
		if counter(t, w.reloads, "k", "error") != 1 {
			return errors.New("no failed reload counted")
		}
		return nil
	})
	time.Sleep(30 * time.Millisecond)
	if n := loads.Load(); n != 2 {
		t.Errorf("%d loads: a failed one was retried without a change", n)
	}

	fail.Store(false)
	trigger <- syscall.SIGHUP
	natstest.Eventually(t, 5*time.Second, func() error {
		if loads.Load() != 3 || counter(t, w.reloads, "k", "ok") != 2 {
			return errors.New("no reload on the trigger")
		}
		return nil
	})
}

// Interval 0: only the trigger reloads.
func TestWatcherWithoutPolling(t *testing.T) {
	file := filepath.Join(t.TempDir(), "key")
	certtest.WriteAtomic(t, file, []byte("one"))
	var loads atomic.Int64
	w := NewWatcher(0, nil, Target{Name: "k", Files: []string{file}, Load: func() error { loads.Add(1); return nil }})
	trigger := make(chan os.Signal, 1)
	go w.Run(t.Context(), trigger)
	certtest.WriteAtomic(t, file, []byte("two"))
	time.Sleep(50 * time.Millisecond)
	if loads.Load() != 0 {
		t.Fatal("reloaded without a trigger while polling is off")
	}
	trigger <- syscall.SIGHUP
	natstest.Eventually(t, 5*time.Second, func() error {
		if loads.Load() != 1 {
			return errors.New("no reload on the trigger")
		}
		return nil
	})
}

// The certificate served changes with Reload; a bad pair, a key of another
// certificate or an expired certificate keeps the one in use.
func TestCertificateReload(t *testing.T) {
	ca := certtest.NewCA(t, "ca")
	one, certFile, keyFile := certtest.NewFiles(t, ca, "one")
	c, err := LoadCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	served := func() string {
		t.Helper()
		got, err := c.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		return got.Leaf.Subject.CommonName
	}
	if served() != "one" || !c.NotAfter().Equal(one.Cert.NotAfter) {
		t.Fatalf("serving %s until %v", served(), c.NotAfter())
	}

	two := certtest.Issue(t, ca, "two", time.Now().Add(2*time.Hour))
	two.WriteFiles(t, certFile, keyFile)
	if err := c.Reload(); err != nil || served() != "two" {
		t.Fatalf("after reload: %s, %v", served(), err)
	}

	three := certtest.Issue(t, ca, "three", time.Now().Add(time.Hour))
	certtest.WriteAtomic(t, certFile, three.CertPEM) // its key not written yet
	if err := c.Reload(); err == nil || served() != "two" {
		t.Errorf("mismatched pair: %v, serving %s", err, served())
	}
	expired := certtest.Issue(t, ca, "expired", time.Now().Add(-time.Minute))
	expired.WriteFiles(t, certFile, keyFile)
	if err := c.Reload(); err == nil || served() != "two" {
		t.Errorf("expired: %v, serving %s", err, served())
	}
	certtest.WriteAtomic(t, certFile, []byte("garbage"))
	if err := c.Reload(); err == nil || served() != "two" {
		t.Errorf("garbage: %v, serving %s", err, served())
	}
	if _, err := LoadCertificate(certFile+".missing", keyFile); err == nil {
		t.Error("a missing certificate loaded")
	}
}
