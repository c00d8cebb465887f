package edgetest

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy forwards loopback TCP connections to an edge (or any target): a
// place to cut connections the way a crashed host or a broken network
// would, or to tamper with what flows.
type Proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// StartProxy listens on a free loopback port and connects every accepted
// connection to target. down copies the target's side to the client (nil:
// a plain copy); the client's side is always copied as it is. The proxy
// is killed when the test ends.
func StartProxy(t testing.TB, target string, down func(client, server net.Conn)) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if down == nil {
		down = func(client, server net.Conn) { _, _ = io.Copy(client, server); client.Close() }
	}
	p := &Proxy{ln: ln}
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
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(out, in); out.Close() }()
			go func() { defer p.wg.Done(); down(in, out) }()
		}
	}()
	t.Cleanup(func() { p.Kill(); p.wg.Wait() })
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Kill stops listening and resets every connection at once (no FIN, no
// close frame), as a crashed edge or its host would.
func (p *Proxy) Kill() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
	p.conns = nil
}
