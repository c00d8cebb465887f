package archive

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// cutProxy forwards loopback TCP to a target until cut: then every
// connection is closed and new ones are refused, as a database host that
// went away looks to its clients.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go p.serve()
	return p
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// PostgreSQL becomes unreachable (connections reset, new ones refused) while
// messages keep coming: nothing is acked, and when it is reachable again
// the archiver catches up with every message once.
func TestPostgresUnreachableLosesNothing(t *testing.T) {
	dsn := postgresDSN(t)
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		t.Skipf("%s is not a postgres:// URL with a host; this test needs one to put a proxy in between", postgresEnv)
	}
	store, _ := openTestPostgres(t) // creates the schema; the archiver gets its own pool below
	schema := store.(*Postgres).pool.Config().ConnConfig.RuntimeParams["search_path"]
	proxy := startCutProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	viaProxy, err := OpenPostgres(t.Context(), withSearchPath(t, u.String(), schema))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { viaProxy.Close() })

	m := newMesh(t, pjs.DefaultStreamOptions())
	a := startArchiver(t, m.srv.URL(), viaProxy, nil, nil)
	m.publish(t, 50, chatSubjects...)
	waitArchived(t, m, store, 50)

	proxy.setCut(true)
	m.publish(t, 120, chatSubjects...)
	natstest.Eventually(t, 10*time.Second, func() error {
		if e := metricValue(a.metrics.StoreErrors); e < 2 {
			return fmt.Errorf("store errors %v", e)
		}
		return nil
	})
	c, err := m.js.Consumer(t.Context(), pjs.ChatStream, pjs.ArchiveConsumer)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if info, err := c.Info(ctx); err != nil || info.AckFloor.Stream != 50 {
		t.Fatalf("while PostgreSQL is unreachable: ack floor %v, err %v (want 50: nothing acked)", info.AckFloor.Stream, err)
	}
	proxy.setCut(false)
	waitArchived(t, m, store, 170)
}
