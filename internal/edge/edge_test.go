package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/client"
	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edge"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

var testSecret = []byte("test-secret-of-reasonable-length-0123456789")

// startEdge starts an edge on its own NATS connection to url; JWT (HS256
// with testSecret) and insecure ?user= are both accepted unless mutate says
// otherwise.
func startEdge(t testing.TB, url string, mutate func(*edge.Config)) *edge.Edge {
	t.Helper()
	return startEdgeOpts(t, url, mutate, nil)
}

func startEdgeOpts(t testing.TB, url string, mutate func(*edge.Config), natsOpts []nats.Option) *edge.Edge {
	t.Helper()
	e, _ := edgetest.StartConn(t, url, func(cfg *edge.Config) {
		cfg.Auth = auth.Config{HMACSecret: testSecret}
		if testing.Verbose() {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
		if mutate != nil {
			mutate(cfg)
		}
	}, append([]nats.Option{nats.ReconnectWait(50 * time.Millisecond)}, natsOpts...)...)
	return e
}

func token(t *testing.T, user string, ttl time.Duration, grants auth.Grants) string {
	t.Helper()
	return tokenTB(t, user, ttl, grants)
}

func tokenTB(t testing.TB, user string, ttl time.Duration, grants auth.Grants) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: user, ExpiresAt: jwt.NewNumericDate(time.Now().Add(ttl))},
		Parley:           grants,
	})
	s, err := tok.SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func noMessage(t *testing.T, c *client.Client, d time.Duration) {
	t.Helper()
	select {
	case m := <-c.Messages():
		t.Fatalf("unexpected message %+v", m)
	case <-time.After(d):
	}
}

func subscribe(t *testing.T, c *client.Client, room string) client.SubResult {
	t.Helper()
	r, err := c.Subscribe(ctxT(t), room)
	if err != nil {
		t.Fatalf("sub %s: %v", room, err)
	}
	return r
}

func TestPubSubWithSeqAndDedup(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	alice, bob := edgetest.Dial(t, e, "alice"), edgetest.Dial(t, e, "bob")
	if r := subscribe(t, bob, "lobby"); r.Seq != 0 || r.Room != "lobby" {
		t.Fatalf("sub reply %+v", r)
	}
	subscribe(t, alice, "lobby")

	ack, err := alice.Publish(ctxT(t), "lobby", "c-1", map[string]string{"text": "hi"})
	if err != nil || ack.Seq != 1 || ack.Dup {
		t.Fatalf("ack %+v err %v", ack, err)
	}
	for _, c := range []*client.Client{alice, bob} {
		m := edgetest.Next(t, c)
		if m.Op != "msg" || m.Room != "lobby" || m.Seq != 1 || m.MsgID != "c-1" || m.From != "alice" || string(m.Data) != `{"text":"hi"}` {
			t.Fatalf("msg %+v data %s", m, m.Data)
		}
		if d := time.Since(time.UnixMilli(m.TS)); d < 0 || d > time.Minute {
			t.Fatalf("ts %d is not the stored time", m.TS)
		}
	}
	// A retry of c-1 is acked as a duplicate with the original seq and never
	// delivered; the same msg_id from another user is a different message.
	ack, err = alice.Publish(ctxT(t), "lobby", "c-1", map[string]string{"text": "hi"})
	if err != nil || ack.Seq != 1 || !ack.Dup {
		t.Fatalf("retry ack %+v err %v", ack, err)
	}
	ack, err = bob.Publish(ctxT(t), "lobby", "c-1", "bob's own")
	if err != nil || ack.Seq != 2 || ack.Dup {
		t.Fatalf("bob's ack %+v err %v", ack, err)
	}
	if m := edgetest.Next(t, alice); m.Seq != 2 || m.From != "bob" {
		t.Fatalf("after the duplicate, alice got %+v", m)
	}
	// The same msg_id for another target is another message (a client
	// numbering per room must not lose the second room's first message).
	ack, err = alice.Publish(ctxT(t), "side", "c-1", "elsewhere")
	if err != nil || ack.Seq != 3 || ack.Dup {
		t.Fatalf("c-1 in another room: ack %+v err %v", ack, err)
	}
	ack, err = alice.PublishDM(ctxT(t), "bob", "c-1", "psst")
	if err != nil || ack.Seq != 4 || ack.Dup {
		t.Fatalf("c-1 as a DM: ack %+v err %v", ack, err)
	}
	if m := edgetest.Next(t, bob); m.Seq != 2 { // his own lobby message
		t.Fatalf("bob got %+v", m)
	}
	if m := edgetest.Next(t, bob); m.Seq != 4 || m.To != "bob" {
		t.Fatalf("bob's DM %+v", m)
	}
	// A late subscriber learns the room's position and gets what follows.
	carol := edgetest.Dial(t, e, "carol")
	if r := subscribe(t, carol, "lobby"); r.Seq != 2 {
		t.Fatalf("carol's sub seq %d, want 2", r.Seq)
	}
	if _, err := alice.Publish(ctxT(t), "lobby", "", 3); err != nil {
		t.Fatal(err)
	}
	if m := edgetest.Next(t, carol); m.Seq != 5 || m.MsgID != "" {
		t.Fatalf("carol got %+v", m)
	}
	// Unsubscribed: nothing more arrives.
	if err := carol.Unsubscribe(ctxT(t), "lobby"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Publish(ctxT(t), "lobby", "c-4", 4); err != nil {
		t.Fatal(err)
	}
	noMessage(t, carol, 200*time.Millisecond)
}

func TestBackendPublishReachesClients(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	alice := edgetest.Dial(t, e, "alice")
	subscribe(t, alice, "ops")
	js := natstest.JetStream(t, srv.URL())

	msg := nats.NewMsg("chat.room.ops")
	msg.Data = []byte(`{"from":"deploy-bot","data":{"version":"1.2.3"}}`)
	msg.Header.Set(jetstream.MsgIDHeader, "deploy-42")
	for range 2 { // the retry is deduplicated by the stream
		if _, err := js.PublishMsg(ctxT(t), msg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.Publish(ctxT(t), "chat.room.ops", []byte("plain text from the nats CLI")); err != nil {
		t.Fatal(err)
	}
	m := edgetest.Next(t, alice)
	if m.Seq != 1 || m.From != "deploy-bot" || m.MsgID != "deploy-42" || string(m.Data) != `{"version":"1.2.3"}` {
		t.Fatalf("got %+v data %s", m, m.Data)
	}
	m = edgetest.Next(t, alice)
	if m.Seq != 2 || string(m.Data) != `"plain text from the nats CLI"` {
		t.Fatalf("got %+v data %s", m, m.Data)
	}
}

func TestDirectMessagesAndBroadcast(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e1 := startEdge(t, srv.URL(), nil)
	e2 := startEdge(t, srv.URL(), nil)
	alice := edgetest.Dial(t, e1, "alice")
	bobTab1, bobTab2 := edgetest.Dial(t, e1, "bob"), edgetest.Dial(t, e2, "bob")
	carol := edgetest.Dial(t, e2, "carol")

	ack, err := alice.PublishDM(ctxT(t), "bob", "dm-1", "psst")
	if err != nil || ack.Dup {
		t.Fatalf("dm ack %+v %v", ack, err)
	}
	for _, c := range []*client.Client{bobTab1, bobTab2} {
		m := edgetest.Next(t, c)
		if m.To != "bob" || m.Room != "" || m.From != "alice" || string(m.Data) != `"psst"` {
			t.Fatalf("bob got %+v", m)
		}
	}
	// Broadcast from a backend reaches every connection; for carol and alice
	// it is the first message, so the DM never reached them.
	nc := natstest.Connect(t, srv.URL())
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(ctxT(t), pjs.BroadcastSubject, []byte(`{"from":"ops","data":"maintenance at 5"}`)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*client.Client{alice, bobTab1, bobTab2, carol} {
		m := edgetest.Next(t, c)
		if m.Room != "" || m.To != "" || m.From != "ops" || string(m.Data) != `"maintenance at 5"` {
			t.Fatalf("broadcast arrived as %+v", m)
		}
	}
}

func TestBadInputGetsCodedErrorsAndConnectionStaysUsable(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxFrameBytes = 4096; c.MaxSubscriptions = 2 })
	c := edgetest.Dial(t, e, "alice")
	cases := []struct {
		name string
		req  string
		code protocol.Code
	}{
		{"dot in room", `{"id":1,"op":"sub","room":"a.b"}`, protocol.CodeBadRequest},
		{"star in room", `{"id":2,"op":"sub","room":"*"}`, protocol.CodeBadRequest},
		{"gt in room", `{"id":3,"op":"pub","room":">","data":1}`, protocol.CodeBadRequest},
		{"space in room", `{"id":4,"op":"sub","room":"a b"}`, protocol.CodeBadRequest},
		{"empty room", `{"id":5,"op":"sub","room":""}`, protocol.CodeBadRequest},
		{"long room", `{"id":6,"op":"sub","room":"` + strings.Repeat("r", 129) + `"}`, protocol.CodeBadRequest},
		{"dot in dm user", `{"id":7,"op":"pub","to":"bob.x","data":1}`, protocol.CodeBadRequest},
		{"control char", `{"id":8,"op":"sub","room":"a\u0000b"}`, protocol.CodeBadRequest},
		{"unknown op", `{"id":9,"op":"dance"}`, protocol.CodeBadRequest},
		{"missing op", `{"id":10}`, protocol.CodeBadRequest},
		{"pub without data", `{"id":11,"op":"pub","room":"lobby"}`, protocol.CodeBadRequest},
		{"msg_id too long", `{"id":12,"op":"pub","room":"lobby","msg_id":"` + strings.Repeat("m", 65) + `","data":1}`, protocol.CodeBadRequest},
		{"wrong type", `{"id":13,"op":"sub","room":5}`, protocol.CodeBadRequest},
		{"unsub not subscribed", `{"id":14,"op":"unsub","room":"lobby"}`, protocol.CodeNotFound},
	}
	for _, tc := range cases {
		rep := sendRaw(t, c, tc.req)
		if rep.Error == nil || rep.Error.Code != tc.code {
			t.Errorf("%s: reply %+v, want %s", tc.name, rep, tc.code)
		}
		var want struct{ ID int64 }
		_ = json.Unmarshal([]byte(tc.req), &want)
		if rep.ID != want.ID {
			t.Errorf("%s: reply id %d, want %d", tc.name, rep.ID, want.ID)
		}
	}
	// Type errors are worded in JSON's terms, not Go's.
	if rep := sendRaw(t, c, `{"id":15,"op":"sub","room":5}`); rep.Error == nil || !strings.Contains(rep.Error.Message, `field "room" must be a string`) {
		t.Errorf("wrong type: %+v", rep.Error)
	}
	if rep := sendRaw(t, c, `{"id":16,"op":"sub","room":"x","since":-1}`); rep.Error == nil || !strings.Contains(rep.Error.Message, `must be a non-negative integer`) {
		t.Errorf("negative since: %+v", rep.Error)
	}
	// Replies without an id: malformed JSON and an oversize frame.
	for _, raw := range []string{`{"id":1,"op":`, `not json`, `{"op":"ping","pad":"` + strings.Repeat("x", 5000) + `"}`} {
		if err := c.Send(ctxT(t), []byte(raw)); err != nil {
			t.Fatal(err)
		}
		select {
		case rep := <-c.Stray():
			want := protocol.CodeBadRequest
			if len(raw) > 4096 {
				want = protocol.CodeTooLarge
			}
			if rep.Error == nil || rep.Error.Code != want {
				t.Errorf("%.20q: reply %+v, want %s", raw, rep, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%.20q: no error reply", raw)
		}
	}
	// Subscription limit.
	subscribe(t, c, "r1")
	subscribe(t, c, "r2")
	if _, err := c.Subscribe(ctxT(t), "r3"); !isCode(err, protocol.CodeForbidden) {
		t.Fatalf("third subscription: %v", err)
	}
	// Still usable after all that.
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatalf("ping after bad input: %v", err)
	}
	if _, err := c.Publish(ctxT(t), "r1", "ok-1", "fine"); err != nil {
		t.Fatal(err)
	}
	if m := edgetest.Next(t, c); m.Room != "r1" {
		t.Fatalf("got %+v", m)
	}
}

// sendRaw sends one raw frame carrying a request with an id and waits for
// its reply.
func sendRaw(t *testing.T, c *client.Client, raw string) protocol.Reply {
	t.Helper()
	var req protocol.Request
	if err := json.Unmarshal([]byte(raw), &req); err != nil {
		// Not decodable by us either (wrong types): match by id by hand.
		var idOnly struct{ ID int64 }
		_ = json.Unmarshal([]byte(raw), &idOnly)
		req.ID = idOnly.ID
	}
	if err := c.Send(ctxT(t), []byte(raw)); err != nil {
		t.Fatal(err)
	}
	select {
	case rep := <-c.Stray():
		return rep
	case <-time.After(5 * time.Second):
		t.Fatalf("no reply to %s", raw)
	}
	return protocol.Reply{}
}

func isCode(err error, code protocol.Code) bool {
	var ce *client.Error
	return errors.As(err, &ce) && ce.Code == code
}

func TestBatchedFrame(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	c := edgetest.Dial(t, e, "alice")
	frame := `{"id":101,"op":"ping"}` + "\n" + `{"id":102,"op":"sub","room":"x.y"}` + "\n\n" + `{"id":103,"op":"ping"}`
	if err := c.Send(ctxT(t), []byte(frame)); err != nil {
		t.Fatal(err)
	}
	got := map[int64]protocol.Reply{}
	for len(got) < 3 {
		select {
		case r := <-c.Stray():
			got[r.ID] = r
		case <-time.After(5 * time.Second):
			t.Fatalf("replies so far: %+v", got)
		}
	}
	if !got[101].OK || got[102].Error == nil || !got[103].OK {
		t.Fatalf("replies %+v", got)
	}
}

func TestAuthentication(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.Insecure = false })

	// No credentials, a bad token, and ?user= outside insecure mode: HTTP 401.
	for _, u := range []string{edgetest.URL(e), edgetest.URL(e) + "?token=garbage", edgetest.URL(e) + "?user=alice"} {
		_, resp, err := websocket.DefaultDialer.Dial(u, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s: err %v resp %v", u, err, resp)
		}
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), `"code":"unauthorized"`) {
			t.Fatalf("401 body %s", body)
		}
	}
	expired := token(t, "alice", -time.Minute, auth.Grants{Subscribe: []string{"*"}})
	if _, err := client.Dial(ctxT(t), edgetest.URL(e), client.WithToken(expired)); err == nil {
		t.Fatal("expired token accepted")
	}

	grants := auth.Grants{Subscribe: []string{"lobby", "team-*"}, Publish: []string{"lobby"}}
	alice, err := client.Dial(ctxT(t), edgetest.URL(e), client.WithToken(token(t, "alice", time.Hour, grants)))
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	subscribe(t, alice, "team-red")
	if _, err := alice.Subscribe(ctxT(t), "secret"); !isCode(err, protocol.CodeForbidden) {
		t.Fatalf("sub outside grants: %v", err)
	}
	if _, err := alice.Publish(ctxT(t), "team-red", "", 1); !isCode(err, protocol.CodeForbidden) {
		t.Fatalf("pub outside grants: %v", err)
	}
	if _, err := alice.Publish(ctxT(t), "lobby", "", 1); err != nil {
		t.Fatal(err)
	}
	// The token in the query works too.
	q, err := client.Dial(ctxT(t), edgetest.URL(e)+"?token="+token(t, "bob", time.Hour, grants))
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
}

func TestTokenExpiryClosesConnection(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	// JWT exp has one-second resolution: 2s leaves at least a second.
	c, err := client.Dial(ctxT(t), edgetest.URL(e), client.WithToken(token(t, "alice", 2*time.Second, auth.Grants{Subscribe: []string{"*"}})))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	subscribe(t, c, "lobby")
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection outlived its token")
	}
	var ce *client.CloseError
	if !errors.As(c.Err(), &ce) || ce.Code != protocol.CloseTokenExpired {
		t.Fatalf("closed with %v, want code %d", c.Err(), protocol.CloseTokenExpired)
	}
}

func TestSlowConsumerIsDisconnectedOthersKeepReceiving(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxQueuedMsgs = 1024; c.MaxQueuedBytes = 8 << 20 })
	// The slow client never reads its messages: the client library stops
	// reading the socket, TCP fills up, and the edge's queue overflows.
	slow, err := client.Dial(ctxT(t), edgetest.URL(e), client.WithUser("slow"), client.WithMessageBuffer(1))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fast := edgetest.Dial(t, e, "fast")
	subscribe(t, slow, "firehose")
	subscribe(t, fast, "firehose")

	js := natstest.JetStream(t, srv.URL())
	const n = 3000
	payload := []byte(`{"data":"` + strings.Repeat("x", 8<<10) + `"}`)
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if _, err := js.PublishAsync("chat.room.firehose", payload); err != nil {
				done <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
		}
		select {
		case <-js.PublishAsyncComplete():
			done <- nil
		case <-time.After(30 * time.Second):
			done <- errors.New("publishes not acked")
		}
	}()
	for i := uint64(1); i <= n; i++ {
		if m := edgetest.Next(t, fast); m.Seq != i {
			t.Fatalf("fast consumer got seq %d, want %d", m.Seq, i)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The edge dropped the slow consumer (the fast one is still connected).
	natstest.Eventually(t, 10*time.Second, func() error {
		if v := edgetest.Metric(t, e, `parley_edge_disconnects_total{reason="slow_consumer"}`); v != 1 {
			return fmt.Errorf("slow_consumer disconnects %v", v)
		}
		if v := edgetest.Metric(t, e, "parley_edge_connections"); v != 1 {
			return fmt.Errorf("connections %v", v)
		}
		return nil
	})
	// When the slow application catches up it finds what reached it, in
	// order, then the end of the connection: with 4002 when the close frame
	// could still be written, else as a broken connection.
	var last uint64
	for m := range slow.Messages() {
		if m.Seq != last+1 {
			t.Fatalf("slow consumer got seq %d after %d", m.Seq, last)
		}
		last = m.Seq
	}
	if last >= n {
		t.Fatalf("slow consumer got all %d messages", last)
	}
	var ce *client.CloseError
	if errors.As(slow.Err(), &ce) && ce.Code != protocol.CloseSlowConsumer {
		t.Fatalf("slow consumer closed with %v", slow.Err())
	}
	t.Logf("slow consumer got %d of %d, then %v", last, n, slow.Err())
}

func TestPublishRateLimit(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.PublishRate = 1; c.PublishBurst = 3 })
	c := edgetest.Dial(t, e, "alice")
	limited := 0
	for i := range 6 {
		if _, err := c.Publish(ctxT(t), "lobby", fmt.Sprint("m", i), i); isCode(err, protocol.CodeRateLimited) {
			limited++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if limited < 2 {
		t.Fatalf("%d of 6 publishes rate limited, want at least 2", limited)
	}
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestOriginCheck(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.AllowedOrigins = []string{"https://chat.example"} })
	for origin, ok := range map[string]bool{"https://chat.example": true, "https://evil.example": false, "": true} {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		c, err := client.Dial(ctxT(t), edgetest.URL(e), client.WithUser("alice"), client.WithHeader(h))
		if (err == nil) != ok {
			t.Fatalf("origin %q: err %v", origin, err)
		}
		if c != nil {
			c.Close()
		}
	}
}

func TestHealthAndMetrics(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), nil)
	c := edgetest.Dial(t, e, "alice")
	subscribe(t, c, "lobby")
	if _, err := c.Publish(ctxT(t), "lobby", "m", 1); err != nil {
		t.Fatal(err)
	}
	edgetest.Next(t, c)
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready",
		"/metrics": "parley_edge_connections 1",
	} {
		resp, err := http.Get("http://" + e.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
		if path == "/metrics" {
			for _, m := range []string{"parley_edge_live_subscriptions 3", "parley_edge_deliveries_total 1", "parley_edge_publish_seconds_count 1", "parley_edge_nats_connected 1"} {
				if !strings.Contains(string(body), m) {
					t.Errorf("metrics lack %q", m)
				}
			}
		}
	}
}

// The edge reads WebSocket frames itself: fragmented messages, client pings,
// the soft and the hard size limits, and protocol violations.
func TestWebSocketFraming(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxFrameBytes = 4096; c.HardFrameLimit = 8192 })
	d := websocket.Dialer{WriteBufferSize: 256} // large messages leave in 256-byte fragments
	ws, _, err := d.Dial(edgetest.URL(e)+"?user=framer", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	pongs := make(chan string, 1)
	ws.SetPongHandler(func(s string) error { pongs <- s; return nil })
	replies := make(chan protocol.Reply, 8)
	closed := make(chan error, 1)
	go func() {
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				closed <- err
				return
			}
			protocol.SplitFrame(b, func(line []byte) {
				var r protocol.Reply
				_ = json.Unmarshal(line, &r)
				replies <- r
			})
		}
	}()
	reply := func() protocol.Reply {
		t.Helper()
		select {
		case r := <-replies:
			return r
		case err := <-closed:
			t.Fatalf("closed: %v", err)
		case <-time.After(5 * time.Second):
			t.Fatal("no reply")
		}
		return protocol.Reply{}
	}
	// A 3,000-byte request in 12 fragments.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"op":"ping"}`+strings.Repeat(" ", 3000))); err != nil {
		t.Fatal(err)
	}
	if r := reply(); r.ID != 1 || !r.OK {
		t.Fatalf("fragmented ping: %+v", r)
	}
	if err := ws.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-pongs:
		if p != "are you there" {
			t.Fatalf("pong %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no pong")
	}
	// Over the soft limit: too_large, the connection stays.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":2,"op":"ping","pad":"`+strings.Repeat("x", 5000)+`"}`)); err != nil {
		t.Fatal(err)
	}
	if r := reply(); r.Error == nil || r.Error.Code != protocol.CodeTooLarge {
		t.Fatalf("oversize: %+v", r)
	}
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":3,"op":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if r := reply(); r.ID != 3 || !r.OK {
		t.Fatalf("after oversize: %+v", r)
	}
	// Over the hard limit: closed with 1009.
	_ = ws.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("y", 10000)))
	select {
	case err := <-closed:
		if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
			t.Fatalf("closed with %v, want 1009", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not closed after the hard limit")
	}
}

// Pings keep an idle connection alive past the read timeout; a client that
// stops answering is dropped after it.
func TestKeepaliveAndReadTimeout(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.PingInterval = 100 * time.Millisecond; c.ReadTimeout = 400 * time.Millisecond })
	c := edgetest.Dial(t, e, "idle")
	time.Sleep(1500 * time.Millisecond) // idle on purpose: nearly four read timeouts
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatalf("idle connection with pongs was dropped: %v", err)
	}
	// Between pings and pongs an idle connection waits in the poller,
	// without a goroutine (Linux).
	if runtime.GOOS == "linux" {
		natstest.Eventually(t, 5*time.Second, func() error {
			if v := edgetest.Metric(t, e, "parley_edge_parked_connections"); v != 1 {
				return fmt.Errorf("parked connections %v, want 1", v)
			}
			return nil
		})
	}
	// A raw client that never reads never answers pings: dropped.
	ws, _, err := websocket.DefaultDialer.Dial(edgetest.URL(e)+"?user=mute", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	natstest.Eventually(t, 5*time.Second, func() error {
		if v := edgetest.Metric(t, e, "parley_edge_connections"); v != 1 {
			return fmt.Errorf("connections %v", v)
		}
		return nil
	})
}

// A client that stops reading fills its socket (its receive window is
// small): the edge's writes block and its queue grows while the client's
// pings wait for pongs. When the client reads again every frame is whole
// (no pong in the middle of a message), every message is there, in order,
// and the last ping is answered.
func TestStalledReaderGetsWholeFramesInOrder(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxQueuedMsgs = 10_000; c.MaxQueuedBytes = 256 << 20 })
	d := websocket.Dialer{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(64 << 10) // a small window: short writes sooner
		}
		return c, err
	}}
	ws, _, err := d.Dial(edgetest.URL(e)+"?user=staller", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"op":"sub","room":"stall"}`)); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, b, err := ws.ReadMessage(); err != nil || !strings.Contains(string(b), `"ok":true`) {
		t.Fatalf("sub: %s %v", b, err)
	}

	// Publish while the client does not read, and ping it meanwhile: its
	// pongs queue behind whatever frame is half written.
	js := natstest.JetStream(t, srv.URL())
	const n = 600
	for i := range n {
		payload := fmt.Sprintf(`{"data":{"i":%d,"pad":%q}}`, i, strings.Repeat("p", 8000+i*37))
		if _, err := js.PublishAsync("chat.room.stall", []byte(payload)); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			if err := ws.WriteControl(websocket.PingMessage, []byte(fmt.Sprint("ping", i)), time.Now().Add(time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatal("publishes not acked")
	}
	time.Sleep(300 * time.Millisecond) // let the edge fill the socket

	var pongs []string
	ws.SetPongHandler(func(s string) error { pongs = append(pongs, s); return nil })
	var want uint64 = 1
	for want <= n {
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, b, err := ws.ReadMessage() // a torn frame fails here
		if err != nil {
			t.Fatalf("reading seq %d: %v", want, err)
		}
		protocol.SplitFrame(b, func(line []byte) {
			var m protocol.Msg
			if err := json.Unmarshal(line, &m); err != nil || m.Op != "msg" {
				t.Fatalf("line %.80q: %v", line, err)
			}
			if m.Seq != want {
				t.Fatalf("seq %d, want %d", m.Seq, want)
			}
			want++
		})
	}
	// A request after the last ping: its reply comes after the pong.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":2,"op":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, b, err := ws.ReadMessage(); err != nil || !strings.Contains(string(b), `"id":2`) {
		t.Fatalf("ping reply: %s %v", b, err)
	}
	// Pings answered while the writer was behind may share one pong (only
	// the latest needs an answer), but the last ping is answered.
	if len(pongs) == 0 || pongs[len(pongs)-1] != fmt.Sprint("ping", n-50) {
		t.Fatalf("pongs %q, want the last one for ping%d", pongs, n-50)
	}
	if v := edgetest.Metric(t, e, `parley_edge_disconnects_total{reason="slow_consumer"}`); v != 0 {
		t.Fatalf("slow_consumer disconnects %v", v)
	}
}

// A connection the edge closes while the client is still sending (a frame
// far over the hard limit, a request flood) must still show the client its
// close code: the edge half-closes and reads what is in flight instead of
// resetting the connection, which could destroy the close frame.
func TestCloseCodeSurvivesUnreadInput(t *testing.T) {
	srv := natstest.StartJetStream(t)
	e := startEdge(t, srv.URL(), func(c *edge.Config) { c.MaxStrikes = 5 })
	closeCode := func(ws *websocket.Conn) int {
		t.Helper()
		for {
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := ws.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					return ce.Code
				}
				t.Fatalf("connection ended without a close frame: %v", err)
			}
		}
	}

	// 3 MiB in one frame, three times the hard limit.
	ws, _, err := websocket.DefaultDialer.Dial(edgetest.URL(e)+"?user=big", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	// Like a simple client: write everything, then read.
	if err := ws.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", 3<<20))); err != nil {
		t.Fatalf("the edge reset the connection under the client's write: %v", err)
	}
	if code := closeCode(ws); code != websocket.CloseMessageTooBig {
		t.Fatalf("close code %d, want 1009", code)
	}

	// A flood of oversize frames: closed for policy while more are on the way.
	ws2, _, err := websocket.DefaultDialer.Dial(edgetest.URL(e)+"?user=flood", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws2.Close()
	big := []byte(strings.Repeat("y", 100<<10))
	for i := range 20 {
		if err := ws2.WriteMessage(websocket.TextMessage, big); err != nil {
			t.Fatalf("frame %d: the edge reset the connection under the client's write: %v", i, err)
		}
	}
	if code := closeCode(ws2); code != protocol.ClosePolicyViolation {
		t.Fatalf("close code %d, want %d", code, protocol.ClosePolicyViolation)
	}
}
