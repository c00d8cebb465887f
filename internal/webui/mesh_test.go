package webui_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/archive"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/internal/presence"
	"github.com/parley-mesh/parley/internal/webui"
)

// jwtSecret signs the tokens of the mesh's JWT edge (HS256, 32+ bytes).
const jwtSecret = "parley-webui-test-secret-0123456789abcdef"

// mesh is what the Node tests run against: one NATS server with
// JetStream (its store outlives the edges), a presence worker and an
// archiver in-process, an insecure edge serving the chat page that the
// tests stop and start on the same address, an edge that takes only JWTs,
// and a proxy in front of the first edge that can lose a publish's ack.
// The Node tests drive it through a small HTTP control API (serveControl).
type mesh struct {
	t    testing.TB
	nats *natstest.Server
	js   jetstream.JetStream
	addr string // the restartable edge's address, the same across restarts
	logs *edgetest.LogBuffer

	mu   sync.Mutex
	edge *edge.Edge // nil while stopped

	jwt     *edge.Edge
	proxy   *ackProxy
	control string // http://127.0.0.1:port of the control API
}

func startMesh(t testing.TB) *mesh {
	t.Helper()
	srv := natstest.StartJetStream(t)
	m := &mesh{t: t, nats: srv, addr: freeAddr(t), logs: &edgetest.LogBuffer{}}
	if err := m.startEdge(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.stopEdge() })
	m.js = natstest.JetStream(t, srv.URL())
	startPresence(t, srv.URL())
	startArchiver(t, srv.URL())
	secureUI, err := webui.Handler(webui.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m.jwt = edgetest.Start(t, srv.URL(), func(c *edge.Config) {
		c.Insecure = false
		c.Auth.HMACSecret = []byte(jwtSecret)
		c.UI = secureUI
		c.Logger = m.logger("jwt-edge")
	})
	m.proxy = startAckProxy(t, m.addr)
	m.control = m.serveControl(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("edge logs:\n%s", m.logs.String())
		}
	})
	return m
}

func (m *mesh) logger(name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(m.logs, &slog.HandlerOptions{Level: slog.LevelInfo})).With("edge", name)
}

// startEdge starts the insecure edge (with the chat page) on m.addr.
func (m *mesh) startEdge() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.edge != nil {
		return nil
	}
	ui, err := webui.Handler(webui.Options{Insecure: true})
	if err != nil {
		return err
	}
	cfg := edge.DefaultConfig()
	cfg.Listen = m.addr
	cfg.Insecure = true
	cfg.UI = ui
	cfg.Logger = m.logger("edge")
	nc, err := nats.Connect(m.nats.URL(), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect the edge to NATS: %w", err)
	}
	e, err := edge.New(cfg, nc)
	if err != nil {
		nc.Close()
		return err
	}
	if err := e.Start(context.Background()); err != nil {
		nc.Close()
		return fmt.Errorf("start the edge on %s: %w", m.addr, err)
	}
	m.edge = e
	return nil
}

// stopEdge drains the edge as SIGTERM would: clients are told 4003 and
// the address refuses connections until startEdge.
func (m *mesh) stopEdge() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.edge == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := m.edge.Shutdown(ctx)
	m.edge = nil
	return err
}

// serveControl serves the API the Node tests call (test/harness.js).
func (m *mesh) serveControl(t testing.TB) string {
	t.Helper()
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, map[string]string{
			"base":    "http://" + m.addr,
			"ws":      "ws://" + m.addr + "/ws",
			"proxy":   "ws://" + m.proxy.ln.Addr().String() + "/ws",
			"jwt":     edgetest.URL(m.jwt),
			"jwtBase": "http://" + m.jwt.Addr(),
			"secret":  jwtSecret,
		}, nil)
	})
	mux.HandleFunc("POST /edge/stop", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, map[string]bool{"ok": true}, m.stopEdge())
	})
	mux.HandleFunc("POST /edge/start", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, map[string]bool{"ok": true}, m.startEdge())
	})
	mux.HandleFunc("POST /proxy/drop-ack", func(w http.ResponseWriter, _ *http.Request) {
		m.proxy.drop.Store(true)
		reply(w, map[string]bool{"ok": true}, nil)
	})
	// A backend service's publishes, straight into JetStream (no edge
	// needed): {"room":"r","texts":["a","b"]} → {"seqs":[…]}.
	mux.HandleFunc("POST /publish", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Room  string   `json:"room"`
			Texts []string `json:"texts"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var seqs []uint64
		for _, text := range req.Texts {
			payload, err := json.Marshal(map[string]any{"from": "backend", "data": map[string]string{"text": text}})
			if err != nil {
				reply(w, nil, err)
				return
			}
			ack, err := m.js.Publish(r.Context(), "chat.room."+req.Room, payload)
			if err != nil {
				reply(w, nil, fmt.Errorf("publish to %s: %w", req.Room, err))
				return
			}
			seqs = append(seqs, ack.Sequence)
		}
		reply(w, map[string]any{"seqs": seqs}, nil)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return "http://" + ln.Addr().String()
}

func startPresence(t testing.TB, url string) {
	t.Helper()
	cfg := presence.DefaultConfig()
	cfg.Listen = ""
	w, err := presence.New(cfg, natstest.Connect(t, url, nats.MaxReconnects(-1)))
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "presence", w.Run)
}

func startArchiver(t testing.TB, url string) {
	t.Helper()
	store, err := archive.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "archive.db"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := archive.New(archive.DefaultConfig(), natstest.Connect(t, url, nats.MaxReconnects(-1)), store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() }) // cleanups run last first: after the archiver stopped
	runUntilCleanup(t, "archiver", a.Run)
}

// runUntilCleanup runs a worker until the test ends, and fails the test if
// it stops by itself with an error.
func runUntilCleanup(t testing.TB, name string, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Errorf("%s stopped: %v", name, err)
		}
	})
}

// ackProxy forwards TCP to the edge. Armed (drop), it swallows the next
// frame from the edge holding a pub ack and cuts both connections with a
// reset: the message is stored, its publisher never hears so, exactly as
// when an edge dies between storing and answering. The client must then
// resend with the same msg_id, and get dup:true.
type ackProxy struct {
	ln     net.Listener
	target string
	drop   atomic.Bool
}

func startAckProxy(t testing.TB, target string) *ackProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ackProxy{ln: ln, target: target}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); _, _ = io.Copy(out, in); out.Close() }()
			go func() { defer wg.Done(); p.down(in, out) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// down copies the edge's side to the client: the HTTP answer to the
// upgrade, then WebSocket frames one by one, so that one can be dropped.
func (p *ackProxy) down(client, edge net.Conn) {
	defer client.Close()
	defer edge.Close()
	r := bufio.NewReader(edge)
	for {
		line, err := r.ReadString('\n')
		if _, werr := io.WriteString(client, line); err != nil || werr != nil {
			return
		}
		if line == "\r\n" {
			break
		}
	}
	for {
		frame, payload, err := readFrame(r)
		if err != nil {
			return
		}
		if bytes.Contains(payload, []byte(`"dup":`)) && p.drop.CompareAndSwap(true, false) {
			for _, c := range []net.Conn{client, edge} {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0) // a reset: no close frame, no goodbye
				}
			}
			return
		}
		if _, err := client.Write(frame); err != nil {
			return
		}
	}
}

// readFrame reads one WebSocket frame (RFC 6455 5.2): all its bytes, and
// its payload (unmasked, as a server sends it).
func readFrame(r *bufio.Reader) (frame, payload []byte, err error) {
	hdr := make([]byte, 2, 14)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, nil, err
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		ext := make([]byte, 2)
		if _, err := io.ReadFull(r, ext); err != nil {
			return nil, nil, err
		}
		hdr = append(hdr, ext...)
		n = uint64(binary.BigEndian.Uint16(ext))
	case 127:
		ext := make([]byte, 8)
		if _, err := io.ReadFull(r, ext); err != nil {
			return nil, nil, err
		}
		hdr = append(hdr, ext...)
		n = binary.BigEndian.Uint64(ext)
	}
	if hdr[1]&0x80 != 0 {
		mask := make([]byte, 4)
		if _, err := io.ReadFull(r, mask); err != nil {
			return nil, nil, err
		}
		hdr = append(hdr, mask...)
	}
	if n > 16<<20 {
		return nil, nil, fmt.Errorf("frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, nil, err
	}
	return append(hdr, payload...), payload, nil
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// The tools the Node tests need. Outside CI a missing one skips the test,
// saying how to get it; in CI (CI=true) it fails, since .ci/run installs
// them and a skip there would hide that the tests never ran.

func need(t testing.TB, what, howTo string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing, and CI must run this test: %s", what, howTo)
	}
	t.Skipf("%s is missing: %s, then run go test ./internal/webui", what, howTo)
}

// sdkDir is sdk/js, with its dev dependencies installed.
func sdkDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "sdk", "js"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "typescript", "package.json")); err != nil {
		need(t, "sdk/js/node_modules", "run npm ci in sdk/js (.ci/run does)")
	}
	return dir
}

// nodeBin is Node.js, 20 or newer.
func nodeBin(t testing.TB) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		need(t, "node", "install Node.js 20 or newer")
		return ""
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Fatalf("node --version: %v", err)
	}
	major, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(strings.TrimSpace(string(out)), ".", 2)[0], "v"))
	if major < 20 {
		need(t, "node 20 or newer (found "+strings.TrimSpace(string(out))+")", "install Node.js 20 or newer")
	}
	return node
}

var nodeSummary = regexp.MustCompile(`(?m)^ℹ (tests|pass|fail|skipped|todo|cancelled) (\d+)$`)

// runNodeTests runs test files of sdk/js with Node's test runner against
// the mesh, and fails unless every test ran and passed: a run that counted
// no test, or skipped one, is a failure too.
func runNodeTests(t *testing.T, m *mesh, env []string, files ...string) {
	t.Helper()
	dir := sdkDir(t)
	node := nodeBin(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--test", "--test-reporter=spec", "--test-concurrency=1"}, files...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append(env, "PARLEY_TEST_CONTROL="+m.control)...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("node %s (%v):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("node tests failed: %v", err)
	}
	counts := map[string]int{}
	for _, s := range nodeSummary.FindAllStringSubmatch(string(out), -1) {
		counts[s[1]], _ = strconv.Atoi(s[2])
	}
	if counts["tests"] == 0 || counts["pass"] != counts["tests"] || counts["fail"]+counts["skipped"]+counts["todo"]+counts["cancelled"] > 0 {
		t.Fatalf("node tests: %v; every test must run and pass", counts)
	}
}
