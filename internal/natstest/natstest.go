// Package natstest starts real embedded nats-servers with JetStream for tests:
// temp store dirs, random loopback ports, torn down by t.Cleanup. Tests wait
// on conditions with Eventually, never on sleeps.
package natstest

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/natsrun"
)

// Server is one embedded server under test.
type Server struct {
	*server.Server
	opts natsrun.Options
}

// URL is the server's client URL.
func (s *Server) URL() string { return s.ClientURL() }

// StartJetStream starts a single JetStream server on a random loopback port.
func StartJetStream(t testing.TB) *Server {
	t.Helper()
	o := natsrun.Options{Listen: "127.0.0.1:" + strconv.Itoa(freePort(t)), StoreDir: t.TempDir()}
	return start(t, o)
}

func start(t testing.TB, o natsrun.Options) *Server {
	t.Helper()
	s, err := natsrun.Start(o)
	if err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	srv := &Server{Server: s, opts: o}
	t.Cleanup(srv.stop)
	return srv
}

func (s *Server) stop() {
	if s.Server == nil {
		return
	}
	s.Shutdown()
	s.WaitForShutdown()
}

// Stop shuts the server down (as a crash would look to its clients).
func (s *Server) Stop() { s.stop() }

// Restart stops the server and starts it again on the same port and store
// directory, so clients reconnect and the stream survives.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.stop()
	ns, err := natsrun.Start(s.opts)
	if err != nil {
		t.Fatalf("restart nats-server: %v", err)
	}
	s.Server = ns
}

// StartCluster starts an n-node JetStream cluster on loopback and waits for a
// JetStream meta leader, so streams can be created right away.
func StartCluster(t testing.TB, n int) []*Server {
	t.Helper()
	clientPorts, routePorts := make([]int, n), make([]int, n)
	routes := make([]string, n)
	for i := range n {
		clientPorts[i], routePorts[i] = freePort(t), freePort(t)
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[i])
	}
	servers := make([]*Server, n)
	for i := range n {
		servers[i] = start(t, natsrun.Options{
			Listen:        "127.0.0.1:" + strconv.Itoa(clientPorts[i]),
			StoreDir:      t.TempDir(),
			Name:          fmt.Sprintf("n%d", i+1),
			Cluster:       "parley-test",
			ClusterListen: "127.0.0.1:" + strconv.Itoa(routePorts[i]),
			Routes:        routes,
			ReadyTimeout:  30 * time.Second,
		})
	}
	Eventually(t, 30*time.Second, func() error {
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				return nil
			}
		}
		return fmt.Errorf("no JetStream meta leader yet")
	})
	return servers
}

// Connect opens a NATS connection closed at cleanup.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection.
func JetStream(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(Connect(t, url))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// Eventually retries cond until it returns nil or timeout passes, then fails
// the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := 5 * time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(interval)
		if interval < 200*time.Millisecond {
			interval *= 2
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
