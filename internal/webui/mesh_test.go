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
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/archive"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
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
	edge *edgetest.Restartable // the insecure edge with the chat page
	logs *edgetest.LogBuffer

	jwt     *edge.Edge
	proxy   *ackProxy
	control string // http://127.0.0.1:port of the control API
}

func startMesh(t testing.TB) *mesh {
	t.Helper()
	srv := natstest.StartJetStream(t)
	m := &mesh{t: t, nats: srv, logs: &edgetest.LogBuffer{}}
	ui, err := webui.Handler(webui.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	m.edge = edgetest.StartRestartable(t, srv.URL(), func(c *edge.Config) {
		c.UI = ui
		c.Logger = m.logger("edge")
	})
	m.js = natstest.JetStream(t, srv.URL())
	edgetest.StartPresence(t, srv.URL())
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
	m.proxy = startAckProxy(t, m.edge.Addr())
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

// serveControl serves the API the Node tests call (test/harness.js).
func (m *mesh) serveControl(t testing.TB) string {
	t.Helper()
	mux := http.NewServeMux()
	reply := edgetest.ReplyJSON
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, map[string]string{
			"base":    "http://" + m.edge.Addr(),
			"ws":      "ws://" + m.edge.Addr() + "/ws",
			"proxy":   "ws://" + m.proxy.Addr() + "/ws",
			"jwt":     edgetest.URL(m.jwt),
			"jwtBase": "http://" + m.jwt.Addr(),
			"secret":  jwtSecret,
		}, nil)
	})
	mux.HandleFunc("POST /edge/stop", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, map[string]bool{"ok": true}, m.edge.Stop())
	})
	mux.HandleFunc("POST /edge/start", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, map[string]bool{"ok": true}, m.edge.Start())
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
	return edgetest.ServeControl(t, mux)
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
	edgetest.RunUntilCleanup(t, "archiver", a.Run)
}

// ackProxy forwards TCP to the edge. Armed (drop), it swallows the next
// frame from the edge holding a pub ack and cuts both connections with a
// reset: the message is stored, its publisher never hears so, exactly as
// when an edge dies between storing and answering. The client must then
// resend with the same msg_id, and get dup:true.
type ackProxy struct {
	*edgetest.Proxy
	drop atomic.Bool
}

func startAckProxy(t testing.TB, target string) *ackProxy {
	t.Helper()
	p := &ackProxy{}
	p.Proxy = edgetest.StartProxy(t, target, p.down)
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

// sdkDir is sdk/js, with its dev dependencies installed.
func sdkDir(t testing.TB) string {
	t.Helper()
	return edgetest.NodeDir(t, filepath.Join("..", "..", "sdk", "js"), "typescript")
}

// runNodeTests runs test files of sdk/js with Node's test runner against
// the mesh (its control API in PARLEY_TEST_CONTROL); every test must run
// and pass.
func runNodeTests(t *testing.T, m *mesh, env []string, files ...string) {
	t.Helper()
	edgetest.RunNodeTests(t, sdkDir(t), 2*time.Minute, append(env, "PARLEY_TEST_CONTROL="+m.control), files...)
}
