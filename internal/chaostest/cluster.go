//go:build unix

package chaostest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// Binaries are the programs a mesh runs as real processes, so that a fault
// can be a SIGKILL and not a polite in-process Shutdown.
type Binaries struct {
	NATS string // nats-server
	Edge string // cmd/edge
}

// Build compiles nats-server (a dependency in go.mod, so it comes from the
// module cache: no network) and the edge into dir. race builds both with the
// race detector, which makes an edge that races under faults die loudly.
func Build(ctx context.Context, dir string, race bool) (Binaries, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	b := Binaries{NATS: filepath.Join(dir, "nats-server"), Edge: filepath.Join(dir, "edge")}
	for out, pkg := range map[string]string{
		b.NATS: "github.com/nats-io/nats-server/v2",
		b.Edge: "github.com/parley-mesh/parley/cmd/edge",
	} {
		args := []string{"build", "-o", out}
		if race {
			args = append(args, "-race")
		}
		cmd := exec.CommandContext(ctx, gobin, append(args, pkg)...)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
		}
	}
	return b, nil
}

// MeshConfig is what StartMesh starts.
type MeshConfig struct {
	Dir   string // data directories and logs
	Bin   Binaries
	Edges int // default 3
	// SyncAlways sets JetStream's sync_interval to always (fsync every
	// write) instead of the default lazy fsync.
	SyncAlways bool
	// EdgeArgs are extra edge flags (they come last, so they win).
	EdgeArgs []string
	Log      *slog.Logger
}

// Mesh is a 3-node JetStream cluster with the R3 chat stream and edges in
// front of it, every one a child process on loopback.
type Mesh struct {
	cfg   MeshConfig
	log   *slog.Logger
	nodes []*natsNode
	edges []*edgeNode
	pass  string

	// witness has a plain subscriber on every node for the republished
	// room messages: which of them reached each node's local clients.
	witness *witness

	admin *nats.Conn // APP account: the stream's JetStream API
	js    jetstream.JetStream
	sys   *nats.Conn // system account: CONNZ and KICK
}

type natsNode struct {
	*proc
	name       string
	clientPort int
}

type edgeNode struct {
	*proc
	id   string // --edge-id, and its NATS user
	port int
}

func (e *edgeNode) url() string { return "ws://" + hostPort(e.port) + "/ws" }

// StartMesh starts the cluster, provisions the chat stream with 3 replicas,
// starts the edges and waits until all of it is healthy. On error whatever
// started is stopped.
func StartMesh(ctx context.Context, cfg MeshConfig) (_ *Mesh, err error) {
	if cfg.Edges <= 0 {
		cfg.Edges = 3
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	pw := make([]byte, 12)
	_, _ = rand.Read(pw)
	m := &Mesh{cfg: cfg, log: cfg.Log, pass: hex.EncodeToString(pw)}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	routePorts := make([]int, 3)
	var routes []string
	for i := range 3 {
		cp, err := freePort()
		if err != nil {
			return nil, err
		}
		rp, err := freePort()
		if err != nil {
			return nil, err
		}
		routePorts[i] = rp
		routes = append(routes, "nats-route://"+hostPort(rp))
		m.nodes = append(m.nodes, &natsNode{name: fmt.Sprintf("n%d", i+1), clientPort: cp})
	}
	for i, n := range m.nodes {
		dir := filepath.Join(cfg.Dir, n.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		conf := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(conf, []byte(m.natsConfig(n, routePorts[i], routes, dir)), 0o600); err != nil {
			return nil, err
		}
		n.proc = newProc(n.name, cfg.Bin.NATS, filepath.Join(cfg.Dir, n.name+".log"), "-c", conf)
		if err := n.start(); err != nil {
			return nil, err
		}
	}
	if m.admin, err = m.connect("chaos", nats.Name("chaostest-admin")); err != nil {
		return nil, err
	}
	if m.sys, err = m.connect("sys", nats.Name("chaostest-sys")); err != nil {
		return nil, err
	}
	if m.js, err = jetstream.New(m.admin); err != nil {
		return nil, err
	}
	if m.witness, err = m.startWitness(); err != nil {
		return nil, err
	}
	// Streams can be created once the cluster has a JetStream meta leader.
	if err := retry(ctx, 60*time.Second, func(ctx context.Context) error {
		// One attempt's request can go unanswered while the cluster
		// forms: bound each, not just the whole wait.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := m.js.AccountInfo(ctx)
		if err != nil {
			m.log.Debug("waiting for JetStream", "err", err, "connected", m.admin.ConnectedUrl(), "status", m.admin.Status().String())
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("jetstream cluster not up: %w", err)
	}
	opts := pjs.DefaultStreamOptions()
	opts.Replicas = 3
	if err := retry(ctx, 30*time.Second, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := pjs.Provision(ctx, m.js, opts)
		return err
	}); err != nil {
		return nil, fmt.Errorf("provision the R3 chat stream: %w", err)
	}
	for i := range cfg.Edges {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		e := &edgeNode{id: fmt.Sprintf("edge-%d", i+1), port: port}
		args := []string{
			"--nats", m.natsURLs(), "--nats-user", e.id, "--nats-password", m.pass,
			"--listen", hostPort(port), "--insecure", "--edge-id", e.id,
			"--stream-replicas", "3", "--drain-timeout", "5s", "--log-format", "json",
		}
		e.proc = newProc(e.id, cfg.Bin.Edge, filepath.Join(cfg.Dir, e.id+".log"), append(args, cfg.EdgeArgs...)...)
		if err := e.start(); err != nil {
			return nil, err
		}
		m.edges = append(m.edges, e)
	}
	if err := m.heal(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	// Exits while the mesh formed (an edge that started before the stream
	// was provisioned) are not a trial's.
	for _, c := range m.crashes() {
		m.log.Warn("while the mesh started", "exit", c)
	}
	return m, nil
}

// natsConfig is one node's configuration: the cluster routes, JetStream in
// the APP account (edges and the harness), and a system account for the
// server's CONNZ and KICK requests.
func (m *Mesh) natsConfig(n *natsNode, routePort int, routes []string, dir string) string {
	sync := ""
	if m.cfg.SyncAlways {
		sync = "\n  sync_interval: always"
	}
	var users []string
	users = append(users, fmt.Sprintf("{user: chaos, password: %q}", m.pass))
	for i := range m.cfg.Edges {
		users = append(users, fmt.Sprintf("{user: edge-%d, password: %q}", i+1, m.pass))
	}
	return fmt.Sprintf(`server_name: %s
listen: %q
logtime: true
jetstream {
  store_dir: %q%s
}
cluster {
  name: chaos
  listen: %q
  routes: [%s]
}
accounts {
  SYS: { users: [{user: sys, password: %q}] }
  APP: { jetstream: enabled, users: [%s] }
}
system_account: SYS
`, n.name, hostPort(n.clientPort), filepath.Join(dir, "js"), sync, hostPort(routePort),
		strings.Join(routes, ", "), m.pass, strings.Join(users, ", "))
}

func (m *Mesh) natsURLs() string {
	var urls []string
	for _, n := range m.nodes {
		urls = append(urls, "nats://"+hostPort(n.clientPort))
	}
	return strings.Join(urls, ",")
}

// connect opens a harness connection that outlives any one node.
func (m *Mesh) connect(user string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append(opts, nats.UserInfo(user, m.pass), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true),
		nats.Timeout(2*time.Second))
	return nats.Connect(m.natsURLs(), opts...)
}

// EdgeURLs are the edges' WebSocket URLs.
func (m *Mesh) EdgeURLs() []string {
	var urls []string
	for _, e := range m.edges {
		urls = append(urls, e.url())
	}
	return urls
}

// JetStream is the harness's JetStream context (APP account).
func (m *Mesh) JetStream() jetstream.JetStream { return m.js }

// Close stops every process (SIGKILL: nothing of the mesh is kept) and the
// harness's connections. It is safe to call more than once.
func (m *Mesh) Close() {
	if m.witness != nil {
		m.witness.close()
	}
	if m.admin != nil {
		m.admin.Close()
	}
	if m.sys != nil {
		m.sys.Close()
	}
	for _, e := range m.edges {
		e.kill()
	}
	for _, n := range m.nodes {
		n.kill()
	}
}

// streamInfo reads the chat stream's state and cluster placement.
func (m *Mesh) streamInfo(ctx context.Context) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := m.js.Stream(ctx, pjs.ChatStream)
	if err != nil {
		return nil, err
	}
	return s.CachedInfo(), nil
}

// leader is the node that leads the chat stream ("" while there is none).
func (m *Mesh) leader(ctx context.Context) string {
	info, err := m.streamInfo(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

func (m *Mesh) node(name string) *natsNode {
	for _, n := range m.nodes {
		if n.name == name {
			return n
		}
	}
	return nil
}

// streamHealthy says why the stream is not fully replicated and led, if
// it is not.
func (m *Mesh) streamHealthy(ctx context.Context) error {
	info, err := m.streamInfo(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	c := info.Cluster
	if c == nil || c.Leader == "" {
		return errors.New("the chat stream has no leader")
	}
	if len(c.Replicas) != 2 {
		return fmt.Errorf("the chat stream has %d followers, want 2", len(c.Replicas))
	}
	for _, r := range c.Replicas {
		if !r.Current || r.Offline {
			return fmt.Errorf("replica %s not current (offline %v, lag %d)", r.Name, r.Offline, r.Lag)
		}
	}
	return nil
}

// heal undoes every fault (resumes paused nodes, restarts dead processes)
// and waits until the stream is led and replicated on all three nodes and
// every edge is ready.
func (m *Mesh) heal(ctx context.Context, timeout time.Duration) error {
	for _, n := range m.nodes {
		if n.isPaused() {
			_ = n.signal(sigCont)
		}
		if !n.running() {
			if err := n.start(); err != nil {
				return err
			}
		}
	}
	for _, e := range m.edges {
		if !e.running() {
			if err := e.start(); err != nil {
				return err
			}
		}
	}
	return retry(ctx, timeout, func(ctx context.Context) error {
		if err := m.streamHealthy(ctx); err != nil {
			return err
		}
		for _, e := range m.edges {
			if !e.running() {
				// An edge that could not start (NATS not back yet when it
				// provisioned) exits; start it again.
				if err := e.start(); err != nil {
					return err
				}
			}
			if err := edgeReady(ctx, e); err != nil {
				return err
			}
		}
		return nil
	})
}

// edgeReady asks the edge's /readyz (connected to NATS, serving).
func edgeReady(ctx context.Context, e *edgeNode) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hostPort(e.port)+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s not ready: %w", e.id, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s not ready: HTTP %d", e.id, resp.StatusCode)
	}
	return nil
}

// startEdge starts an edge again and waits until it is ready.
func (m *Mesh) startEdge(ctx context.Context, e *edgeNode) error {
	if err := e.start(); err != nil {
		return err
	}
	return retry(ctx, 20*time.Second, func(ctx context.Context) error {
		if !e.running() {
			if err := e.start(); err != nil {
				return err
			}
		}
		return edgeReady(ctx, e)
	})
}

// serverConn is where an edge's NATS connection is: the server's id and
// the connection's id there.
type serverConn struct {
	server, serverName string
	cid                uint64
}

// findConn asks every server (system account CONNZ, filtered by the edge's
// NATS user) which of them holds the edge's connection.
func (m *Mesh) findConn(ctx context.Context, user string) (serverConn, error) {
	inbox := m.sys.NewRespInbox()
	sub, err := m.sys.SubscribeSync(inbox)
	if err != nil {
		return serverConn{}, err
	}
	defer sub.Unsubscribe()
	req, _ := json.Marshal(map[string]any{"auth": true, "user": user, "acc": "APP"})
	if err := m.sys.PublishRequest("$SYS.REQ.SERVER.PING.CONNZ", inbox, req); err != nil {
		return serverConn{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for range len(m.nodes) {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			break
		}
		var r struct {
			Server struct {
				ID   string `json:"id"`
				Name string `json:"name"`
			} `json:"server"`
			Data struct {
				Conns []struct {
					CID  uint64 `json:"cid"`
					User string `json:"authorized_user"`
				} `json:"connections"`
			} `json:"data"`
		}
		if json.Unmarshal(msg.Data, &r) != nil {
			continue
		}
		for _, c := range r.Data.Conns {
			if c.User == user {
				return serverConn{server: r.Server.ID, serverName: r.Server.Name, cid: c.CID}, nil
			}
		}
	}
	return serverConn{}, fmt.Errorf("no server holds a connection of %s", user)
}

// kick makes a server close a client connection ($SYS.REQ.SERVER.<id>.KICK,
// nats-server 2.10+); the client reconnects as after a network error.
func (m *Mesh) kick(ctx context.Context, sc serverConn) error {
	req, _ := json.Marshal(map[string]uint64{"cid": sc.cid})
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	msg, err := m.sys.RequestWithContext(ctx, "$SYS.REQ.SERVER."+sc.server+".KICK", req)
	if err != nil {
		return err
	}
	var r struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if json.Unmarshal(msg.Data, &r) == nil && r.Error != nil {
		return fmt.Errorf("kick: %s", r.Error.Description)
	}
	return nil
}

// stepDown asks the chat stream's leader to hand over leadership.
func (m *Mesh) stepDown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := m.admin.RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN."+pjs.ChatStream, nil)
	if err != nil {
		return err
	}
	var r struct {
		Success bool `json:"success"`
		Error   *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return err
	}
	if r.Error != nil {
		return fmt.Errorf("step-down: %s", r.Error.Description)
	}
	if !r.Success {
		return errors.New("step-down: not successful")
	}
	return nil
}

// retry runs f until it succeeds or timeout passes, with a short growing
// pause between attempts; it returns f's last error.
func retry(ctx context.Context, timeout time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	wait := 20 * time.Millisecond
	var last error // the last error that is not just our deadline
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", timeout, last)
		case <-time.After(wait):
		}
		wait = min(2*wait, 250*time.Millisecond)
	}
}
