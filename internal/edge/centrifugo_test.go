package edge_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/centrifugal/centrifuge-go"
	"github.com/gorilla/websocket"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
)

func centrifugoURL(e *edge.Edge) string { return "ws://" + e.Addr() + "/connection/websocket" }

// cfSub is a centrifuge-go subscription with its events on channels.
type cfSub struct {
	sub        *centrifuge.Subscription
	pubs       chan centrifuge.PublicationEvent
	subscribed chan centrifuge.SubscribedEvent
	joins      chan string
}

func newCFSub(t *testing.T, c *centrifuge.Client, channel string, cfg centrifuge.SubscriptionConfig) *cfSub {
	t.Helper()
	sub, err := c.NewSubscription(channel, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &cfSub{sub: sub, pubs: make(chan centrifuge.PublicationEvent, 100),
		subscribed: make(chan centrifuge.SubscribedEvent, 10), joins: make(chan string, 10)}
	sub.OnPublication(func(ev centrifuge.PublicationEvent) { s.pubs <- ev })
	sub.OnSubscribed(func(ev centrifuge.SubscribedEvent) { s.subscribed <- ev })
	sub.OnJoin(func(ev centrifuge.JoinEvent) { s.joins <- ev.User })
	if err := sub.Subscribe(); err != nil {
		t.Fatal(err)
	}
	return s
}

func recvCF[T any](t *testing.T, ch chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(edgetest.Wait):
		t.Fatalf("no %s within %v", what, edgetest.Wait)
	}
	var zero T
	return zero
}

// The real centrifuge-go SDK against a real edge: a JWT with Parley grants,
// messages both ways with a Parley client in the same room (same seqs as
// offsets), history, presence, join pushes, and recovery after a
// disconnect: what was published meanwhile arrives once, in order, with
// recovered true.
func TestCentrifugoSDK(t *testing.T) { testCentrifugoSDK(t, centrifuge.NewJsonClient) }

// The same with centrifuge-go's Protobuf client (the centrifuge-protobuf
// subprotocol, binary frames), as the mobile SDKs speak it.
func TestCentrifugoSDKProtobuf(t *testing.T) { testCentrifugoSDK(t, centrifuge.NewProtobufClient) }

// cfNewClient is centrifuge-go's constructor of one format.
type cfNewClient func(endpoint string, config centrifuge.Config) *centrifuge.Client

func testCentrifugoSDK(t *testing.T, newClient cfNewClient) {
	srv := natstest.StartJetStream(t)
	edgetest.StartPresence(t, srv.URL())
	e := startEdge(t, srv.URL(), nil)

	tok := token(t, "carol", time.Hour, auth.Grants{Subscribe: []string{"lobby"}, Publish: []string{"lobby"}})
	cf := newClient(centrifugoURL(e), centrifuge.Config{Token: tok})
	t.Cleanup(cf.Close)
	connected := make(chan centrifuge.ConnectedEvent, 4)
	cf.OnConnected(func(ev centrifuge.ConnectedEvent) { connected <- ev })
	s := newCFSub(t, cf, "lobby", centrifuge.SubscriptionConfig{JoinLeave: true})
	if err := cf.Connect(); err != nil {
		t.Fatal(err)
	}
	if ev := recvCF(t, connected, "connect"); ev.ClientID == "" {
		t.Fatalf("client id %q", ev.ClientID)
	}
	first := recvCF(t, s.subscribed, "subscribe")
	if !first.Recoverable || !first.Positioned || first.StreamPosition == nil || first.StreamPosition.Epoch == "" {
		t.Fatalf("subscribed: %+v", first)
	}
	epoch := first.StreamPosition.Epoch

	alice := edgetest.Dial(t, e, "alice")
	if _, err := alice.Subscribe(ctxT(t), "lobby"); err != nil {
		t.Fatal(err)
	}
	// Carol's own join may come first; alice's must come.
	for u := recvCF(t, s.joins, "join push"); u != "alice"; u = recvCF(t, s.joins, "join push of alice") {
		if u != "carol" {
			t.Fatalf("join of %q", u)
		}
	}

	// Parley → Centrifugo.
	ack, err := alice.Publish(ctxT(t), "lobby", "a-1", map[string]string{"text": "hi carol"})
	if err != nil {
		t.Fatal(err)
	}
	pub := recvCF(t, s.pubs, "publication")
	if pub.Offset != ack.Seq || pub.Info == nil || pub.Info.User != "alice" || string(pub.Data) != `{"text":"hi carol"}` || pub.Tags["msg_id"] != "a-1" {
		t.Fatalf("publication %+v (info %+v), want offset %d from alice", pub.Publication, pub.Info, ack.Seq)
	}
	if m := edgetest.Next(t, alice); m.Seq != ack.Seq {
		t.Fatalf("alice got seq %d", m.Seq)
	}

	// Centrifugo → Parley, and to itself.
	if _, err := s.sub.Publish(ctxT(t), []byte(`{"text":"hi alice"}`)); err != nil {
		t.Fatal(err)
	}
	m := edgetest.Next(t, alice)
	if m.From != "carol" || string(m.Data) != `{"text":"hi alice"}` {
		t.Fatalf("alice got %+v", m)
	}
	if own := recvCF(t, s.pubs, "own publication"); own.Offset != m.Seq || own.Info.User != "carol" {
		t.Fatalf("carol's own publication %+v, want offset %d", own.Publication, m.Seq)
	}

	// A backend service publishing on NATS reaches both.
	b := newBackend(t, srv.URL())
	b.pub("lobby", 77)
	fromBackend := edgetest.Next(t, alice)
	if p := recvCF(t, s.pubs, "backend publication"); p.Offset != fromBackend.Seq || string(p.Data) != `77` || p.Info.User != "svc" {
		t.Fatalf("backend publication %+v, alice saw seq %d", p.Publication, fromBackend.Seq)
	}

	hist, err := s.sub.History(ctxT(t), centrifuge.WithHistoryLimit(10))
	if err != nil {
		t.Fatal(err)
	}
	if got := offsets(hist.Publications); !slices.Equal(got, []uint64{ack.Seq, m.Seq, fromBackend.Seq}) || hist.Epoch != epoch || hist.Offset != fromBackend.Seq {
		t.Fatalf("history offsets %v epoch %q top %d", got, hist.Epoch, hist.Offset)
	}
	rev, err := s.sub.History(ctxT(t), centrifuge.WithHistoryLimit(2), centrifuge.WithHistoryReverse(true))
	if err != nil {
		t.Fatal(err)
	}
	if got := offsets(rev.Publications); !slices.Equal(got, []uint64{fromBackend.Seq, m.Seq}) {
		t.Fatalf("reverse history offsets %v", got)
	}
	since, err := s.sub.History(ctxT(t), centrifuge.WithHistoryLimit(-1),
		centrifuge.WithHistorySince(&centrifuge.StreamPosition{Offset: ack.Seq, Epoch: epoch}))
	if err != nil {
		t.Fatal(err)
	}
	if got := offsets(since.Publications); !slices.Equal(got, []uint64{m.Seq, fromBackend.Seq}) {
		t.Fatalf("history since %d: %v", ack.Seq, got)
	}
	if _, err := s.sub.History(ctxT(t), centrifuge.WithHistoryLimit(5),
		centrifuge.WithHistorySince(&centrifuge.StreamPosition{Offset: 1, Epoch: "other"})); !isCFError(err, 112) {
		t.Fatalf("history since another epoch: %v", err)
	}

	natstest.Eventually(t, edgetest.Wait, func() error {
		p, err := s.sub.Presence(ctxT(t))
		if err != nil {
			return err
		}
		if _, ok := p.Clients["carol"]; !ok || len(p.Clients) != 2 {
			return fmt.Errorf("presence %v", p.Clients)
		}
		st, err := s.sub.PresenceStats(ctxT(t))
		if err != nil || st.NumUsers != 2 {
			return fmt.Errorf("presence stats %+v %v", st, err)
		}
		return nil
	})

	// Away: three messages published meanwhile, recovered on return.
	if err := cf.Disconnect(); err != nil {
		t.Fatal(err)
	}
	var missed []uint64
	for i := range 3 {
		a, err := alice.Publish(ctxT(t), "lobby", fmt.Sprintf("away-%d", i), i)
		if err != nil {
			t.Fatal(err)
		}
		missed = append(missed, a.Seq)
	}
	if err := cf.Connect(); err != nil {
		t.Fatal(err)
	}
	again := recvCF(t, s.subscribed, "resubscribe")
	if !again.WasRecovering || !again.Recovered {
		t.Fatalf("resubscribed: %+v", again)
	}
	var got []uint64
	for range missed {
		got = append(got, recvCF(t, s.pubs, "recovered publication").Offset)
	}
	if !slices.Equal(got, missed) {
		t.Fatalf("recovered offsets %v, want %v", got, missed)
	}
	select {
	case extra := <-s.pubs:
		t.Fatalf("duplicate or extra publication %+v", extra.Publication)
	case <-time.After(300 * time.Millisecond):
	}
	// And live again.
	live, err := alice.Publish(ctxT(t), "lobby", "after", "back")
	if err != nil {
		t.Fatal(err)
	}
	if p := recvCF(t, s.pubs, "live publication"); p.Offset != live.Seq {
		t.Fatalf("live offset %d, want %d", p.Offset, live.Seq)
	}
}

func offsets(pubs []centrifuge.Publication) []uint64 {
	out := make([]uint64, len(pubs))
	for i, p := range pubs {
		out[i] = p.Offset
	}
	return out
}

func isCFError(err error, code uint32) bool {
	var e *centrifuge.Error
	return err != nil && errors.As(err, &e) && e.Code == code
}

// The endpoint's protocol edges with a raw WebSocket: the server's ping,
// an epoch that is not the stream's (not recovered), coded errors for bad
// requests, and "bad request" (3501) for a frame that is not a command.
func TestCentrifugoProtocolEdges(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(cfg *edge.Config) {
		cfg.PingInterval = time.Second
		cfg.ReadTimeout = 5 * time.Second
	})
	ws, _, err := websocket.DefaultDialer.Dial(centrifugoURL(e), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	send := func(s string) {
		t.Helper()
		if err := ws.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	// read returns the next reply that is not a ping, answering pings.
	pings := 0
	read := func() map[string]json.RawMessage {
		t.Helper()
		for {
			_ = ws.SetReadDeadline(time.Now().Add(edgetest.Wait))
			_, data, err := ws.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			for line := range strings.SplitSeq(string(data), "\n") {
				if line == "{}" {
					pings++
					send("{}")
					continue
				}
				var r map[string]json.RawMessage
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatalf("reply %q: %v", line, err)
				}
				return r
			}
		}
	}
	tok := token(t, "dave", time.Hour, auth.Grants{Subscribe: []string{"*"}, Publish: []string{"*"}})
	send(`{"id":1,"connect":{"token":"` + tok + `","name":"raw"}}`)
	r := read()
	var conn struct {
		Client string `json:"client"`
		Ping   int    `json:"ping"`
		Pong   bool   `json:"pong"`
	}
	if err := json.Unmarshal(r["connect"], &conn); err != nil || conn.Client == "" || conn.Ping != 1 || !conn.Pong {
		t.Fatalf("connect reply %s", r["connect"])
	}
	send(`{"id":2,"subscribe":{"channel":"room","recover":true,"epoch":"not-this-one","offset":7}}`)
	r = read()
	var sub struct {
		Recovered     bool   `json:"recovered"`
		WasRecovering bool   `json:"was_recovering"`
		Recoverable   bool   `json:"recoverable"`
		Epoch         string `json:"epoch"`
	}
	if err := json.Unmarshal(r["subscribe"], &sub); err != nil {
		t.Fatal(err)
	}
	if string(r["id"]) != "2" || sub.Recovered || !sub.WasRecovering || !sub.Recoverable || sub.Epoch == "" {
		t.Fatalf("subscribe with another epoch: %s", r["subscribe"])
	}
	for _, c := range []struct{ cmd, code string }{
		{`{"id":3,"subscribe":{"channel":"room"}}`, "105"},
		{`{"id":4,"subscribe":{"channel":"a.b"}}`, "107"},
		{`{"id":5,"publish":{"channel":"*","data":{}}}`, "107"},
		{`{"id":6,"subscribe":{"channel":"#erin"}}`, "103"},
		{`{"id":7,"rpc":{"method":"x"}}`, "104"},
	} {
		send(c.cmd)
		r = read()
		var e struct{ Code json.RawMessage }
		if err := json.Unmarshal(r["error"], &e); err != nil || string(e.Code) != c.code {
			t.Fatalf("%s: reply %v, want error %s", c.cmd, r, c.code)
		}
	}
	// The server pings every second; answered, the connection stays.
	deadline := time.Now().Add(edgetest.Wait)
	for pings < 2 && time.Now().Before(deadline) {
		send(`{"id":8,"ping":{}}`)
		read()
		time.Sleep(200 * time.Millisecond)
	}
	if pings < 2 {
		t.Fatalf("%d server pings", pings)
	}
	send(`not json`)
	_ = ws.SetReadDeadline(time.Now().Add(edgetest.Wait))
	for {
		if _, _, err = ws.ReadMessage(); err != nil {
			break
		}
	}
	if !websocket.IsCloseError(err, 3501) {
		t.Fatalf("after a malformed frame: %v, want close 3501", err)
	}
}

// The first command must be connect with a valid token.
func TestCentrifugoConnectRefusals(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	for _, c := range []struct {
		first string
		code  int
	}{
		{`{"id":1,"subscribe":{"channel":"room"}}`, 3501},
		{`{"id":1,"connect":{"token":"not-a-jwt"}}`, 3500},
		{`{"id":1,"connect":{"token":"` + token(t, "x", -time.Minute, auth.Grants{}) + `"}}`, 3005},
	} {
		ws, _, err := websocket.DefaultDialer.Dial(centrifugoURL(e), nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = ws.WriteMessage(websocket.TextMessage, []byte(c.first))
		_ = ws.SetReadDeadline(time.Now().Add(edgetest.Wait))
		for {
			if _, _, err = ws.ReadMessage(); err != nil {
				break
			}
		}
		ws.Close()
		if !websocket.IsCloseError(err, c.code) {
			t.Fatalf("%s: %v, want close %d", c.first, err, c.code)
		}
	}
	// A JSON connection takes no binary frame.
	ws, _, err := websocket.DefaultDialer.Dial(centrifugoURL(e), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.WriteMessage(websocket.BinaryMessage, []byte(`{"id":1,"connect":{}}`))
	if err := readUntilClose(ws); !websocket.IsCloseError(err, 3501) {
		t.Fatalf("binary frame on a JSON connection: %v, want close 3501", err)
	}
}

// readUntilClose reads ws until it fails: the close, normally.
func readUntilClose(ws *websocket.Conn) error {
	_ = ws.SetReadDeadline(time.Now().Add(edgetest.Wait))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			return err
		}
	}
}
