// Package reload re-reads the edge's key and certificate files while it
// runs: when their contents change (polled) or on SIGHUP. A reload that
// fails keeps what was loaded before, so a half-written file or a wrong key
// never takes a working edge down.
package reload

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Target is one thing to reload: the files it is read from and the
// function that reads them and puts the result in use (or returns an error
// and changes nothing).
type Target struct {
	Name  string // metric label and log key: "jwt_keys", "tls_cert"
	Files []string
	Load  func() error
}

// Watcher reloads its targets. It polls the files' contents rather than
// their modification times: Kubernetes updates a mounted Secret by swapping
// a symlink (the files' own mtimes stay), and two writes within one mtime
// tick would otherwise go unseen.
type Watcher struct {
	targets  []Target
	interval time.Duration
	log      *slog.Logger
	sums     [][32]byte // per target, of the contents last loaded or tried

	reloads     *prometheus.CounterVec
	lastSuccess *prometheus.GaugeVec
}

// NewWatcher remembers the targets' current contents: call it right after
// the targets were first loaded. interval 0 polls nothing: reloads happen on
// Run's trigger only.
func NewWatcher(interval time.Duration, log *slog.Logger, targets ...Target) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		targets:  targets,
		interval: interval,
		log:      log,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_edge_reloads_total",
			Help: "Reloads of key and certificate files (what: jwt_keys, tls_cert) by result (ok, error); on error the previous ones stay in use.",
		}, []string{"what", "result"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "parley_edge_reload_last_success_timestamp_seconds",
			Help: "Unix time the files of what (jwt_keys, tls_cert) were last loaded successfully, at start or by a reload.",
		}, []string{"what"}),
	}
	now := float64(time.Now().UnixNano()) / 1e9
	for _, t := range targets {
		w.sums = append(w.sums, sum(t.Files))
		w.reloads.WithLabelValues(t.Name, "ok")
		w.reloads.WithLabelValues(t.Name, "error")
		w.lastSuccess.WithLabelValues(t.Name).Set(now)
	}
	return w
}

// Describe implements prometheus.Collector.
func (w *Watcher) Describe(ch chan<- *prometheus.Desc) {
	w.reloads.Describe(ch)
	w.lastSuccess.Describe(ch)
}

// Collect implements prometheus.Collector.
func (w *Watcher) Collect(ch chan<- prometheus.Metric) {
	w.reloads.Collect(ch)
	w.lastSuccess.Collect(ch)
}

// Run reloads every target whose files changed, each interval, and every
// target on each value of trigger (SIGHUP), until ctx ends.
func (w *Watcher) Run(ctx context.Context, trigger <-chan os.Signal) {
	var tick <-chan time.Time
	if w.interval > 0 {
		t := time.NewTicker(w.interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			for i := range w.targets {
				if s := sum(w.targets[i].Files); s != w.sums[i] {
					w.load(i, s, "changed")
				}
			}
		case sig := <-trigger:
			for i := range w.targets {
				w.load(i, sum(w.targets[i].Files), sig.String())
			}
		}
	}
}

// load reloads target i. A failed attempt is remembered like a successful
// one: a broken file is not retried every tick, only once it changes again
// (or on SIGHUP).
func (w *Watcher) load(i int, s [32]byte, why string) {
	t := w.targets[i]
	w.sums[i] = s
	if err := t.Load(); err != nil {
		w.reloads.WithLabelValues(t.Name, "error").Inc()
		w.log.Error("reload failed; still using the previous one", "what", t.Name, "why", why, "files", t.Files, "err", err)
		return
	}
	w.reloads.WithLabelValues(t.Name, "ok").Inc()
	w.lastSuccess.WithLabelValues(t.Name).SetToCurrentTime()
	w.log.Info("reloaded", "what", t.Name, "why", why, "files", t.Files)
}

// sum hashes the files' contents; a file that cannot be read counts as
// empty, so its reappearance is a change.
func sum(files []string) [32]byte {
	h := sha256.New()
	for _, f := range files {
		b, _ := os.ReadFile(f)
		// Length first, so moving bytes from one file to the next is a
		// change too.
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}
