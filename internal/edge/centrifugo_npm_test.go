// Not centrifugo_js_test.go: a _js suffix would make it GOOS=js only.

package edge_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/internal/edgetest"
	"github.com/parley-mesh/parley/internal/natstest"
	"github.com/parley-mesh/parley/protocol"
)

// The real centrifuge npm SDK (5.x, pinned in
// testdata/centrifuge-js/package-lock.json, unmodified, ws as its
// WebSocket since Node 20 has no global one) against a real edge:
// testdata/centrifuge-js/centrifuge.test.js connects with a JWT, exchanges
// messages with a Parley Go client in the same room, reads history and
// presence, and recovers what was published while it was disconnected.
// The Node side drives the Parley client through the control API below.
// Run it with: (cd internal/edge/testdata/centrifuge-js && npm ci) then
// go test ./internal/edge -run TestCentrifugeJS -v.
func TestCentrifugeJS(t *testing.T) {
	dir := edgetest.NodeDir(t, filepath.Join("testdata", "centrifuge-js"), "centrifuge")
	edgetest.NodeBin(t)
	srv := natstest.StartJetStream(t)
	edgetest.StartPresence(t, srv.URL())
	e := startEdge(t, srv.URL(), nil)

	alice := edgetest.Dial(t, e, "alice")
	var mu sync.Mutex
	received := map[string][]protocol.Msg{} // what alice got, by room
	go func() {
		for m := range alice.Messages() {
			mu.Lock()
			received[m.Room] = append(received[m.Room], m)
			mu.Unlock()
		}
	}()

	// carol's token: a Parley JWT with Parley grants, unchanged.
	carol := token(t, "carol", time.Hour, auth.Grants{Subscribe: []string{"*"}, Publish: []string{"*"}})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, _ *http.Request) {
		edgetest.ReplyJSON(w, map[string]string{"url": centrifugoURL(e), "token": carol}, nil)
	})
	// The Parley client: {"room":"r"} subscribes alice, live from now on.
	mux.HandleFunc("POST /parley/subscribe", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Room string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, err := alice.Subscribe(r.Context(), req.Room)
		edgetest.ReplyJSON(w, map[string]bool{"ok": true}, err)
	})
	// {"room":"r","texts":["a","b"]}: alice publishes each, in order →
	// {"seqs":[…]}.
	mux.HandleFunc("POST /parley/publish", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Room  string
			Texts []string
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		seqs := []uint64{}
		for i, text := range req.Texts {
			ack, err := alice.Publish(r.Context(), req.Room, fmt.Sprintf("%s-%d-%d", req.Room, time.Now().UnixNano(), i), map[string]string{"text": text})
			if err != nil {
				edgetest.ReplyJSON(w, nil, fmt.Errorf("publish to %s: %w", req.Room, err))
				return
			}
			seqs = append(seqs, ack.Seq)
		}
		edgetest.ReplyJSON(w, map[string]any{"seqs": seqs}, nil)
	})
	// {"room":"r"} → every message alice received in r, in order.
	mux.HandleFunc("POST /parley/received", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Room string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		msgs := append([]protocol.Msg{}, received[req.Room]...)
		mu.Unlock()
		edgetest.ReplyJSON(w, map[string]any{"msgs": msgs}, nil)
	})
	control := edgetest.ServeControl(t, mux)
	edgetest.RunNodeTests(t, dir, time.Minute, []string{"PARLEY_TEST_CONTROL=" + control}, "centrifuge.test.js")
}
