package archive

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/natstest"
	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

var chatSubjects = []string{"chat.room.lobby", "chat.room.ops", "chat.dm.bob", "chat.broadcast"}

// N published → exactly N rows, each what the edge would push.
func TestArchiveEveryMessageOnce(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		store, _ := k.open(t)
		m := newMesh(t, pjs.DefaultStreamOptions())
		const n = 400
		seqs := m.publish(t, n, chatSubjects...)
		a := startArchiver(t, m.srv.URL(), store, nil, nil)
		waitArchived(t, m, store, n)
		if got := metricValue(a.metrics.Archived); got != n {
			t.Fatalf("archived metric %v, want %d", got, n)
		}
		// Catching up after downtime and then live: more messages follow.
		seqs = append(seqs, m.publish(t, 40, chatSubjects...)...)
		waitArchived(t, m, store, n+40)

		// Spot-check contents: the lobby's messages, oldest first.
		var lobby []uint64
		for i, s := range seqs {
			if i%len(chatSubjects) == 0 {
				lobby = append(lobby, s)
			}
		}
		recs, _, err := store.History(t.Context(), HistoryQuery{Kind: KindRoom, Name: "lobby", Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != len(lobby) {
			t.Fatalf("lobby has %d records, want %d", len(recs), len(lobby))
		}
		for i, r := range recs {
			want := fmt.Sprintf(`{"i":%d}`, i*len(chatSubjects))
			if r.Seq != lobby[i] || r.From != "svc" || string(r.Data) != want || r.Subject != "chat.room.lobby" ||
				r.MsgID != fmt.Sprintf("svc:chat.room.lobby:%d", i*len(chatSubjects)) || time.Since(r.Time) > time.Minute {
				t.Fatalf("record %d: %+v data %s", i, r, r.Data)
			}
		}
		dms, _, err := store.History(t.Context(), HistoryQuery{Kind: KindDM, Name: "bob", Limit: 1000})
		if err != nil || len(dms) != len(lobby) {
			t.Fatalf("bob's DMs: %d records, err %v", len(dms), err)
		}
	})
}

// The archiver dies after committing a batch and before acking it; its
// successor gets the batch again and the store still holds every message
// exactly once.
func TestCrashBetweenCommitAndAck(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		store, _ := k.open(t)
		m := newMesh(t, pjs.DefaultStreamOptions())
		const n = 230
		m.publish(t, n, chatSubjects...)
		var commits atomic.Int32
		crashing := startArchiver(t, m.srv.URL(), store, nil, func() error {
			if commits.Add(1) == 2 {
				return errCrash
			}
			return nil
		})
		select {
		case <-crashing.done:
			if !errors.Is(crashing.err, errCrash) {
				t.Fatalf("archiver ended with %v, want the simulated crash", crashing.err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the archiver did not reach its second commit")
		}
		stored, _, err := store.Count(t.Context())
		if err != nil || stored != 100 {
			t.Fatalf("after the crash: %d rows (want two batches, 100), err %v", stored, err)
		}
		successor := startArchiver(t, m.srv.URL(), store, nil, nil)
		waitArchived(t, m, store, n)
		if d := metricValue(successor.metrics.Duplicates); d != 50 {
			t.Fatalf("successor skipped %v duplicates, want the 50 of the unacked batch", d)
		}
	})
}

// Two replicas share the consumer: every message once, none twice.
func TestTwoReplicas(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		store, _ := k.open(t)
		m := newMesh(t, pjs.DefaultStreamOptions())
		small := func(c *Config) { c.Batch = 10 }
		a := startArchiver(t, m.srv.URL(), store, small, nil)
		b := startArchiver(t, m.srv.URL(), store, small, nil)
		natstest.Eventually(t, 10*time.Second, func() error {
			if !a.Ready() || !b.Ready() {
				return errors.New("replicas not ready")
			}
			return nil
		})
		const n = 500
		m.publish(t, n, chatSubjects...)
		waitArchived(t, m, store, n)
		got := metricValue(a.metrics.Archived) + metricValue(b.metrics.Archived)
		dups := metricValue(a.metrics.Duplicates) + metricValue(b.metrics.Duplicates)
		if got != n || dups != 0 {
			t.Fatalf("replicas archived %v with %v duplicates, want %d and 0", got, dups, n)
		}
	})
}

// The store fails for a while (its table is gone): nothing is acked,
// messages wait in the stream, and once it is back everything is archived.
func TestStoreDownLosesNothing(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		store, admin := k.open(t)
		m := newMesh(t, pjs.DefaultStreamOptions())
		a := startArchiver(t, m.srv.URL(), store, nil, nil)
		m.publish(t, 100, chatSubjects...)
		waitArchived(t, m, store, 100)

		admin.exec(t, `ALTER TABLE parley_messages RENAME TO parley_messages_away`)
		m.publish(t, 150, chatSubjects...)
		srv := httptest.NewServer(a.Handler())
		defer srv.Close()
		natstest.Eventually(t, 10*time.Second, func() error {
			if metricValue(a.metrics.StoreErrors) < 3 || metricValue(a.metrics.StoreUp) != 0 {
				return fmt.Errorf("store errors %v, up %v", metricValue(a.metrics.StoreErrors), metricValue(a.metrics.StoreUp))
			}
			if code := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable {
				return fmt.Errorf("/readyz %d while the store is down", code)
			}
			return nil
		})
		c, err := m.js.Consumer(t.Context(), pjs.ChatStream, pjs.ArchiveConsumer)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if info.AckFloor.Stream != 100 {
			t.Fatalf("ack floor %d while the store is down, want 100 (nothing acked)", info.AckFloor.Stream)
		}

		admin.exec(t, `ALTER TABLE parley_messages_away RENAME TO parley_messages`)
		waitArchived(t, m, store, 250)
		natstest.Eventually(t, 5*time.Second, func() error {
			if code := get(t, srv.URL+"/readyz"); code != http.StatusOK {
				return fmt.Errorf("/readyz %d after the store came back", code)
			}
			return nil
		})
		if code := get(t, srv.URL+"/healthz"); code != http.StatusOK {
			t.Fatalf("/healthz %d", code)
		}
	})
}

func get(t testing.TB, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// Messages outside the contract are recorded as poison, acked and skipped;
// the ones around them are archived.
func TestPoisonIsRecordedAndSkipped(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		store, _ := k.open(t)
		m := newMesh(t, pjs.DefaultStreamOptions())
		m.publish(t, 20, "chat.room.lobby")
		m.publish(t, 2, "chat.room.not.a.room", "chat.unknown")
		m.publish(t, 20, "chat.room.lobby")
		a := startArchiver(t, m.srv.URL(), store, nil, nil)
		waitArchived(t, m, store, 40)
		_, poison, err := store.Count(t.Context())
		if err != nil || poison != 2 {
			t.Fatalf("poison rows %d (want 2), err %v", poison, err)
		}
		if p := metricValue(a.metrics.Poison); p != 2 {
			t.Fatalf("poison metric %v", p)
		}
	})
}

// The history service over NATS request/reply: paging backwards, resuming
// forwards, bad requests get coded errors.
func TestHistoryService(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		store, _ := k.open(t)
		m := newMesh(t, pjs.DefaultStreamOptions())
		seqs := m.publish(t, 60, "chat.room.lobby", "chat.room.other")
		var lobby []uint64
		for i := 0; i < len(seqs); i += 2 {
			lobby = append(lobby, seqs[i])
		}
		startArchiver(t, m.srv.URL(), store, func(c *Config) { c.HistoryMax = 20 }, nil)
		waitArchived(t, m, store, 60)
		nc := natstest.Connect(t, m.srv.URL())

		ask := func(req string) (HistoryResponse, *nats.Msg) {
			t.Helper()
			msg, err := nc.Request(pjs.ArchiveHistorySubject, []byte(req), 5*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", req, err)
			}
			var resp HistoryResponse
			if err := json.Unmarshal(msg.Data, &resp); err != nil {
				t.Fatalf("%s: %v: %s", req, err, msg.Data)
			}
			return resp, msg
		}
		seqsOf := func(resp HistoryResponse) []uint64 {
			out := make([]uint64, len(resp.Msgs))
			for i, raw := range resp.Msgs {
				var m protocol.Msg
				if err := json.Unmarshal(raw, &m); err != nil || m.Op != "msg" || m.Room != "lobby" || m.From != "svc" {
					t.Fatalf("message %s: %v", raw, err)
				}
				out[i] = m.Seq
			}
			return out
		}
		last := seqs[len(seqs)-1]
		// covered: the reply's stretch and how far the archive holds all of
		// it (here everything: every sequence 1..60 is archived).
		for _, tc := range []struct {
			req     string
			want    []uint64
			more    bool
			covered pjs.ArchiveCoverage
		}{
			{`{"room":"lobby","limit":5}`, lobby[25:], true, pjs.ArchiveCoverage{After: lobby[25], Through: last}},
			{fmt.Sprintf(`{"room":"lobby","before":%d,"limit":5}`, lobby[10]), lobby[5:10], true, pjs.ArchiveCoverage{After: lobby[5], Through: lobby[10] - 1}},
			{fmt.Sprintf(`{"room":"lobby","before":%d,"limit":5}`, lobby[3]), lobby[:3], false, pjs.ArchiveCoverage{After: 0, Through: lobby[3] - 1}},
			{`{"room":"lobby","limit":500}`, lobby[10:], true, pjs.ArchiveCoverage{After: lobby[10], Through: last}}, // cut to HistoryMax
			{fmt.Sprintf(`{"room":"lobby","after":%d,"before":%d,"limit":4}`, lobby[2], lobby[10]), lobby[3:7], true, pjs.ArchiveCoverage{After: lobby[2], Through: lobby[6]}},
			{fmt.Sprintf(`{"room":"lobby","after":%d,"before":%d}`, lobby[2], lobby[10]), lobby[3:10], false, pjs.ArchiveCoverage{After: lobby[2], Through: lobby[10] - 1}},
			{fmt.Sprintf(`{"room":"lobby","after":%d}`, lobby[27]), lobby[28:], false, pjs.ArchiveCoverage{After: lobby[27], Through: last}},
			{`{"room":"nobody"}`, []uint64{}, false, pjs.ArchiveCoverage{After: 0, Through: last}},
			{fmt.Sprintf(`{"room":"lobby","before_ts":%d}`, time.Now().Add(-time.Hour).UnixMilli()), []uint64{}, false, pjs.ArchiveCoverage{After: 0, Through: last}},
			{`{"room":"lobby","after":0,"before":1}`, []uint64{}, false, pjs.ArchiveCoverage{After: 0, Through: 0}},
		} {
			resp, _ := ask(tc.req)
			got := seqsOf(resp)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || resp.More != tc.more || resp.Error != nil {
				t.Fatalf("%s: got %v more %v err %v, want %v more %v", tc.req, got, resp.More, resp.Error, tc.want, tc.more)
			}
			if resp.Covered == nil || *resp.Covered != tc.covered {
				t.Fatalf("%s: covered %+v, want %+v", tc.req, resp.Covered, tc.covered)
			}
		}
		for _, bad := range []string{`{"room":"a.b"}`, `{"room":""}`, `{"room":"lobby","limit":-1}`, `not json`} {
			resp, msg := ask(bad)
			if resp.Error == nil || resp.Error.Code != protocol.CodeBadRequest || msg.Header.Get("Nats-Service-Error-Code") != "400" {
				t.Fatalf("%s: got %+v headers %v", bad, resp, msg.Header)
			}
		}
	})
}

// A record the store refuses for its data (here an operator's constraint)
// does not block the stream: the batch is split, the culprit recorded as
// poison, the rest archived.
func TestRefusedRecordBecomesPoison(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		store, admin := k.open(t)
		if k.name == "sqlite" {
			admin.exec(t, `CREATE TRIGGER refuse BEFORE INSERT ON parley_messages
				WHEN NEW.data LIKE '%refuse-me%' BEGIN SELECT RAISE(ABORT, 'refused by policy'); END`)
		} else {
			admin.exec(t, `ALTER TABLE parley_messages ADD CONSTRAINT refuse CHECK (data::text NOT LIKE '%refuse-me%')`)
		}
		m := newMesh(t, pjs.DefaultStreamOptions())
		m.publish(t, 10, "chat.room.lobby")
		if _, err := m.js.Publish(t.Context(), "chat.room.lobby", []byte(`{"data":"refuse-me"}`)); err != nil {
			t.Fatal(err)
		}
		m.publish(t, 10, "chat.room.lobby")
		a := startArchiver(t, m.srv.URL(), store, nil, nil)
		waitArchived(t, m, store, 20)
		if _, poison, err := store.Count(t.Context()); err != nil || poison != 1 {
			t.Fatalf("poison rows %d (want 1), err %v", poison, err)
		}
		if p := metricValue(a.metrics.Poison); p != 1 {
			t.Fatalf("poison metric %v", p)
		}
	})
}

// A backend message whose data is not UTF-8 is archived as the edge pushed
// it (invalid bytes replaced), not refused by PostgreSQL and made poison.
func TestInvalidUTF8IsArchivedAsPushed(t *testing.T) {
	forEachStore(t, func(t *testing.T, k storeKind) {
		store, _ := k.open(t)
		m := newMesh(t, pjs.DefaultStreamOptions())
		if _, err := m.js.Publish(t.Context(), "chat.room.lobby", []byte("{\"from\":\"svc\",\"data\":\"a\xffb\u2028\"}")); err != nil {
			t.Fatal(err)
		}
		startArchiver(t, m.srv.URL(), store, nil, nil)
		waitArchived(t, m, store, 1)
		if _, poison, err := store.Count(t.Context()); err != nil || poison != 0 {
			t.Fatalf("poison rows %d (want 0), err %v", poison, err)
		}
		recs, _, err := store.History(t.Context(), HistoryQuery{Kind: KindRoom, Name: "lobby", Limit: 10})
		if err != nil || len(recs) != 1 {
			t.Fatalf("history %v, err %v", recs, err)
		}
		if got, want := string(recs[0].Data), `"a\ufffdb\u2028"`; got != want {
			t.Fatalf("archived data %s, want %s", got, want)
		}
	})
}

// decode follows the edge's rules (envelope or bare value, msg_id from the
// envelope or the header); names that are not subject tokens are poison.
func TestDecodeRules(t *testing.T) {
	at := time.UnixMilli(1764050400123)
	for _, tc := range []struct {
		subject, payload string
		hdr              map[string][]string
		poison           bool
		kind             Kind
		name, from, id   string
		data             string
	}{
		{"chat.room.lobby", `{"from":"alice","msg_id":"c-1","data":{"t":1}}`, nil, false, KindRoom, "lobby", "alice", "c-1", `{"t":1}`},
		{"chat.dm.bob", `{"from":"x","data":"hi"}`, map[string][]string{jetstream.MsgIDHeader: {"x:9"}}, false, KindDM, "bob", "x", "x:9", `"hi"`},
		{"chat.broadcast", `plain text`, nil, false, KindBroadcast, "", "", "", `"plain text"`},
		{"chat.room.lobby", `[1,2]`, nil, false, KindRoom, "lobby", "", "", `[1,2]`},
		{"chat.room.lobby", "{\"from\":\"a\\u0000b\",\"data\":1}", nil, false, KindRoom, "lobby", "a\uFFFDb", "", `1`},
		{"chat.room.a.b", `{"data":1}`, nil, true, "", "", "", "", ""},
		{"chat.dm.", `{"data":1}`, nil, true, "", "", "", "", ""},
		{"chat.other", `{"data":1}`, nil, true, "", "", "", "", ""},
	} {
		r, p := decode(7, at, tc.subject, []byte(tc.payload), tc.hdr)
		if (p != nil) != tc.poison {
			t.Fatalf("%s %s: poison %+v", tc.subject, tc.payload, p)
		}
		if p != nil {
			if p.Seq != 7 || p.Reason == "" || string(p.Payload) != tc.payload {
				t.Fatalf("poison %+v", p)
			}
			continue
		}
		if r.Kind != tc.kind || r.Name != tc.name || r.From != tc.from || r.MsgID != tc.id || string(r.Data) != tc.data || !r.Time.Equal(at) {
			t.Fatalf("%s %s: %+v data %s", tc.subject, tc.payload, r, r.Data)
		}
	}
}
