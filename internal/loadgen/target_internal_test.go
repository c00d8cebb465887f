package loadgen

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

// The Centrifugo HTTP API publisher: one waiting message goes to
// /api/publish, several to /api/batch in order, with the API key, and an
// error in a batch's replies is that message's outcome.
func TestCentrifugoPublisherHTTP(t *testing.T) {
	type req struct {
		path, key, ctype string
		body             map[string]any
	}
	reqs := make(chan req, 10)
	release := make(chan struct{})
	first := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil {
			t.Errorf("body %q: %v", b, err)
		}
		reqs <- req{r.URL.Path, r.Header.Get("X-API-Key"), r.Header.Get("Content-Type"), body}
		if first { // hold the sender so the next messages wait together
			first = false
			<-release
			_, _ = io.WriteString(w, `{"result":{}}`)
			return
		}
		_, _ = io.WriteString(w, `{"replies":[{"publish":{}},{"error":{"code":102,"message":"unknown channel"}},{"publish":{}}]}`)
	}))
	defer srv.Close()
	p := newCentrifugoPublisher(srv.URL+"/", "the-key", 1)
	defer p.close()
	var mu sync.Mutex
	errs := map[int]error{}
	pub := func(n int) {
		p.publish("room-1", stepPayload(0, uint64(n), ""), func(err error) {
			mu.Lock()
			errs[n] = err
			mu.Unlock()
		})
	}
	pub(1)
	r := <-reqs
	if r.path != "/api/publish" || r.key != "the-key" || r.ctype != "application/json" || r.body["channel"] != "room-1" {
		t.Fatalf("request %+v", r)
	}
	if d, _ := r.body["data"].(map[string]any); d["n"] != 1.0 || d["s"] != 0.0 || d["t"] == nil {
		t.Fatalf("data %v", r.body["data"])
	}
	pub(2)
	pub(3)
	pub(4)
	close(release)
	r = <-reqs
	cmds, _ := r.body["commands"].([]any)
	if r.path != "/api/batch" || r.key != "the-key" || len(cmds) != 3 {
		t.Fatalf("request %+v", r)
	}
	for i, c := range cmds {
		pb := c.(map[string]any)["publish"].(map[string]any)
		if pb["channel"] != "room-1" || pb["data"].(map[string]any)["n"] != float64(i+2) {
			t.Fatalf("command %d: %v", i, c)
		}
	}
	if err := p.flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) != 4 || errs[1] != nil || errs[2] != nil || errs[4] != nil || errs[3] == nil || !strings.Contains(errs[3].Error(), "102") {
		t.Fatalf("outcomes %v", errs)
	}
}

// The centrifugo driver's connect, subscribe, receive and ping answers,
// against the Parley edge's Centrifugo-compatible endpoint with a token it
// minted, messages published by Parley's backend publisher.
func TestCentrifugoDriverReceives(t *testing.T) {
	const secret = "loadgen-test-secret-0123456789abcdef"
	srv := natstest.StartJetStream(t)
	e := edgetest.Start(t, srv.URL(), func(c *edge.Config) {
		c.Auth = auth.Config{HMACSecret: []byte(secret)}
		// Pings every 100 ms, closed after 400 ms of silence: the driver
		// must answer them to stay connected.
		c.PingInterval, c.ReadTimeout = 100*time.Millisecond, 400*time.Millisecond
	})
	var d centrifugoDriver
	tok, err := mintToken(secret, "cf-user")
	if err != nil {
		t.Fatal(err)
	}
	u, err := d.url("ws://"+e.Addr()+"/connection/websocket", "cf-user", tok)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dialWS(t.Context(), u, net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	got := make(chan []byte, 100)
	onData := func(b []byte) { got <- append([]byte(nil), b...) }
	if err := d.subscribe(c, "cf-user", tok, "cf-room", onData); err != nil {
		t.Fatal(err)
	}
	go c.serve(d, onData)
	time.Sleep(time.Second) // pings come and go
	p, err := newParleyPublisher(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	for n := uint64(1); n <= 3; n++ {
		p.publish("cf-room", stepPayload(2, n, "pad"), func(err error) {
			if err != nil {
				t.Errorf("publish %d: %v", n, err)
			}
		})
	}
	if err := p.flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	for n := uint64(1); n <= 3; n++ {
		select {
		case b := <-got:
			ts, step, seq, ok := parsePayload(b)
			if !ok || step != 2 || seq != n || ts <= 0 || !strings.Contains(string(b), `"push"`) {
				t.Fatalf("push %s: step %d seq %d", b, step, seq)
			}
		case <-c.done:
			t.Fatalf("connection ended: %v", c.err)
		case <-time.After(10 * time.Second):
			t.Fatalf("no message %d", n)
		}
	}
}

// A NATS frame may hold several protocol lines or part of one.
func TestNATSStreamParsing(t *testing.T) {
	var d natsDriver
	c := &wsConn{}
	var got []string
	pongs := 0
	onData := func(b []byte) { got = append(got, string(b)) }
	onPong := func() { pongs++ }
	stream := "INFO {\"x\":1}\r\nPONG\r\nMSG r1 1 5\r\nhello\r\nMSG r1 1 reply.to 3\r\nabc\r\nMSG r1 1 0\r\n\r\n"
	// Every split of the stream into two frames parses the same.
	for cut := 0; cut <= len(stream); cut++ {
		got, pongs, c.pending = nil, 0, nil
		for _, part := range []string{stream[:cut], stream[cut:]} {
			if err := d.feed(c, []byte(part), onData, onPong); err != nil {
				t.Fatalf("cut %d: %v", cut, err)
			}
		}
		if strings.Join(got, "|") != "hello|abc|" || pongs != 1 || len(c.pending) != 0 {
			t.Fatalf("cut %d: %q, %d pongs, pending %q", cut, got, pongs, c.pending)
		}
	}
	if err := d.feed(c, []byte("-ERR 'Authorization Violation'\r\n"), onData, onPong); err == nil {
		t.Fatal("-ERR accepted")
	}
}

// The payload is found inside any envelope, and seqs are counted once.
func TestPayloadAndCounting(t *testing.T) {
	b := stepPayload(7, 42, "xx")
	env := `{"op":"msg","room":"r","seq":9,"ts":1,"data":` + string(b) + `}`
	if ts, step, n, ok := parsePayload([]byte(env)); !ok || step != 7 || n != 42 || ts <= 0 {
		t.Fatalf("parse %s: %d %d %d %v", env, ts, step, n, ok)
	}
	w := &worker{stepHists: map[int]*hdrhistogram.Histogram{}}
	room := &droom{uniq: make([]atomic.Uint64, 1), dups: make([]atomic.Uint64, 1), disorder: make([]atomic.Uint64, 1)}
	cn := &dconn{room: room}
	for _, n := range []uint64{1, 2, 2, 4, 3, 3, 1, 100, 5} {
		w.onData(cn, stepPayload(0, n, ""))
	}
	// New: 1 2 4 3 100 5 (3 and 5 late; 5 beyond the 64-seq window is
	// taken as new), repeated: 2 3 1.
	if room.uniq[0].Load() != 6 || room.dups[0].Load() != 3 || room.disorder[0].Load() != 2 {
		t.Fatalf("uniq %d dups %d disorder %d", room.uniq[0].Load(), room.dups[0].Load(), room.disorder[0].Load())
	}
}
