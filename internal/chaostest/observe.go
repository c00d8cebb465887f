//go:build unix

package chaostest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// What the harness observes besides its clients: the edges' own logs,
// processes that died without being told to, and what RePublish delivered
// on each node. None of it decides a trial by itself except crashes; it
// says where to look when a trial fails.

// logOffsets marks where each edge's log ends now.
func (m *Mesh) logOffsets() map[string]int64 {
	off := map[string]int64{}
	for _, e := range m.edges {
		if fi, err := os.Stat(e.log); err == nil {
			off[e.log] = fi.Size()
		}
	}
	return off
}

// edgeLogSince counts the warnings, errors and gap repairs the edges
// logged after off, by level and message: what the edges themselves
// noticed in a trial.
func (m *Mesh) edgeLogSince(off map[string]int64) map[string]int {
	counts := map[string]int{}
	for _, e := range m.edges {
		f, err := os.Open(e.log)
		if err != nil {
			continue
		}
		if _, err := f.Seek(off[e.log], 0); err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				var l struct{ Level, Msg string }
				if json.Unmarshal(sc.Bytes(), &l) != nil {
					if strings.HasPrefix(sc.Text(), "panic:") || strings.HasPrefix(sc.Text(), "fatal error:") || strings.HasPrefix(sc.Text(), "WARNING: DATA RACE") {
						counts[e.id+" "+sc.Text()]++
					}
					continue
				}
				switch {
				case strings.HasPrefix(l.Msg, "INSECURE MODE"): // we asked for it
				case l.Level == "WARN" || l.Level == "ERROR" || strings.Contains(l.Msg, "gap"):
					// Gap repairs are INFO, but they say which path of the
					// edge a fault exercised.
					counts[l.Level+" "+l.Msg]++
				}
			}
		}
		f.Close()
	}
	return counts
}

// crashes lists the processes that exited without being told to since
// the last call.
func (m *Mesh) crashes() []string {
	var out []string
	check := func(p *proc) {
		if n, err := p.takeCrashes(); n > 0 {
			out = append(out, fmt.Sprintf("%s exited %d time(s) on its own (last: %v; see %s)", p.name, n, err, p.log))
		}
	}
	for _, n := range m.nodes {
		check(n.proc)
	}
	for _, e := range m.edges {
		check(e.proc)
	}
	return out
}

// witness records, per node, the seqs of republished room messages that
// reached a plain core-NATS subscriber connected to that node only: what
// RePublish delivered there, before any edge logic.
type witness struct {
	mu     sync.Mutex
	prefix string                     // the current trial's rooms
	seen   map[string]map[uint64]bool // node → seqs
	conns  []*nats.Conn
}

func (m *Mesh) startWitness() (*witness, error) {
	w := &witness{seen: map[string]map[uint64]bool{}}
	for _, n := range m.nodes {
		name := n.name
		nc, err := nats.Connect("nats://"+hostPort(n.clientPort), nats.UserInfo("chaos", m.pass),
			nats.Name("chaostest-witness-"+name), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
			nats.RetryOnFailedConnect(true))
		if err != nil {
			w.close()
			return nil, err
		}
		w.conns = append(w.conns, nc)
		sub, err := nc.Subscribe(pjs.LiveSubject(pjs.RoomPrefix)+"*", func(msg *nats.Msg) {
			room := strings.TrimPrefix(msg.Subject, pjs.LiveSubject(pjs.RoomPrefix))
			seq, err := strconv.ParseUint(msg.Header.Get(pjs.HeaderSequence), 10, 64)
			if err != nil {
				return
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			if w.prefix != "" && strings.HasPrefix(room, w.prefix) {
				if w.seen[name] == nil {
					w.seen[name] = map[uint64]bool{}
				}
				w.seen[name][seq] = true
			}
		})
		if err != nil {
			w.close()
			return nil, err
		}
		_ = sub.SetPendingLimits(-1, -1)
	}
	return w, nil
}

// reset starts recording a trial's rooms.
func (w *witness) reset(prefix string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.prefix, w.seen = prefix, map[string]map[uint64]bool{}
}

// missed counts, per node, the stored messages its witness never got.
func (w *witness) missed(nodes []string, stored []StoredMsg) map[string]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]int{}
	for _, n := range nodes {
		for _, m := range stored {
			if !w.seen[n][m.Seq] {
				out[n]++
			}
		}
	}
	return out
}

func (w *witness) close() {
	for _, nc := range w.conns {
		nc.Close()
	}
}
