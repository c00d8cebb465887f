package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// centrifugoDriver speaks Centrifugo's client protocol v2 in JSON at
// /connection/websocket: a connect command with the token, a subscribe
// command, their replies, then publication pushes; a frame may carry
// several replies and pushes, one JSON object a line. The server's ping is
// an empty object, answered with one.
type centrifugoDriver struct{}

func (centrifugoDriver) url(base, user, token string) (string, error) {
	if token == "" && !strings.Contains(base, "?") {
		// No token: name the user the insecure way (a Parley edge's
		// Centrifugo endpoint in dev mode takes ?user=).
		return base + "?user=" + user, nil
	}
	return base, nil
}

// cfReply is the part of a Centrifugo reply the driver looks at.
type cfReply struct {
	ID    uint32 `json:"id"`
	Error *struct {
		Code    uint32 `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

var cfPing = []byte("{}")

func (centrifugoDriver) subscribe(c *wsConn, _, token, room string, onData func([]byte)) error {
	connect := map[string]any{"name": "parley-loadgen"}
	if token != "" {
		connect["token"] = token
	}
	deadline := time.Now().Add(30 * time.Second)
	for id, cmd := range []map[string]any{
		{"id": 1, "connect": connect},
		{"id": 2, "subscribe": map[string]any{"channel": room}},
	} {
		b, _ := json.Marshal(cmd)
		if err := c.write(websocket.TextMessage, b); err != nil {
			return err
		}
		what := [...]string{"connect", "subscribe"}[id]
		for done := false; !done; {
			msg, err := c.next(deadline)
			if err != nil {
				return err
			}
			err = splitLines(msg, func(line []byte) error {
				if bytes.Equal(line, cfPing) {
					return c.write(websocket.TextMessage, cfPing)
				}
				if done || bytes.Contains(line, []byte(payloadKey)) {
					onData(line)
					return nil
				}
				var r cfReply
				if json.Unmarshal(line, &r) != nil || r.ID != uint32(id+1) {
					return nil // another push (join, …)
				}
				if r.Error != nil {
					return &refusedError{what, fmt.Sprintf("%d %s", r.Error.Code, r.Error.Message)}
				}
				done = true
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func (centrifugoDriver) read(c *wsConn, b []byte, onData func([]byte)) error {
	return splitLines(b, func(line []byte) error {
		if bytes.Equal(line, cfPing) {
			return c.write(websocket.TextMessage, cfPing)
		}
		onData(line)
		return nil
	})
}

// centrifugoPublisher publishes through Centrifugo's HTTP server API, as a
// backend does: POST /api/publish {"channel","data"} with X-API-Key, or,
// when several messages are waiting, POST /api/batch with one publish
// command each. Rooms are spread over sequential senders (each room always
// on the same one, so a room's messages reach the server in order) on a
// keep-alive client.
type centrifugoPublisher struct {
	api, key string
	hc       *http.Client
	shards   []chan cfPub
	wg       sync.WaitGroup
	mu       sync.Mutex
	out      int
	idle     *sync.Cond
}

type cfPub struct {
	room string
	body []byte
	done func(error)
}

// cfSenders bounds the parallel HTTP requests of the publisher.
const cfSenders = 16

// cfMaxBatch bounds the publishes in one /api/batch request.
const cfMaxBatch = 500

func newCentrifugoPublisher(api, key string, rooms int) *centrifugoPublisher {
	n := min(max(rooms, 1), cfSenders)
	p := &centrifugoPublisher{
		api: strings.TrimRight(api, "/"), key: key,
		hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			MaxIdleConns: 2 * n, MaxIdleConnsPerHost: 2 * n, IdleConnTimeout: time.Minute,
		}},
		shards: make([]chan cfPub, n),
	}
	p.idle = sync.NewCond(&p.mu)
	for i := range p.shards {
		ch := make(chan cfPub, 8192)
		p.shards[i] = ch
		p.wg.Add(1)
		go p.send(ch)
	}
	return p
}

func (p *centrifugoPublisher) publish(room string, body []byte, done func(error)) {
	h := fnv.New32a()
	_, _ = h.Write([]byte(room))
	p.mu.Lock()
	p.out++
	p.mu.Unlock()
	p.shards[h.Sum32()%uint32(len(p.shards))] <- cfPub{room, body, done}
}

// send is one sender: it takes what is waiting (up to cfMaxBatch) and sends
// it in one request.
func (p *centrifugoPublisher) send(ch chan cfPub) {
	defer p.wg.Done()
	for first := range ch {
		batch := []cfPub{first}
	more:
		for len(batch) < cfMaxBatch {
			select {
			case m, ok := <-ch:
				if !ok {
					break more
				}
				batch = append(batch, m)
			default:
				break more
			}
		}
		errs := p.post(batch)
		for i, m := range batch {
			m.done(errs[i])
		}
		p.mu.Lock()
		p.out -= len(batch)
		if p.out == 0 {
			p.idle.Broadcast()
		}
		p.mu.Unlock()
	}
}

// cfAPIError is an error object of Centrifugo's server API.
type cfAPIError struct {
	Code    uint32 `json:"code"`
	Message string `json:"message"`
}

func (e *cfAPIError) Error() string {
	return fmt.Sprintf("centrifugo API error %d: %s", e.Code, e.Message)
}

// post sends batch and returns each message's outcome.
func (p *centrifugoPublisher) post(batch []cfPub) []error {
	errs := make([]error, len(batch))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	var body bytes.Buffer
	path := "/api/publish"
	if len(batch) == 1 {
		fmt.Fprintf(&body, `{"channel":%q,"data":%s}`, batch[0].room, batch[0].body)
	} else {
		path = "/api/batch"
		body.WriteString(`{"commands":[`)
		for i, m := range batch {
			if i > 0 {
				body.WriteByte(',')
			}
			fmt.Fprintf(&body, `{"publish":{"channel":%q,"data":%s}}`, m.room, m.body)
		}
		body.WriteString(`]}`)
	}
	req, err := http.NewRequest(http.MethodPost, p.api+path, &body)
	if err != nil {
		return fail(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", p.key)
	resp, err := p.hc.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fail(err)
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("centrifugo API %s: HTTP %d: %.200s", path, resp.StatusCode, b))
	}
	if len(batch) == 1 {
		var r struct {
			Error *cfAPIError `json:"error"`
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return fail(fmt.Errorf("centrifugo API %s: %w", path, err))
		}
		if r.Error != nil {
			errs[0] = r.Error
		}
		return errs
	}
	var r struct {
		Replies []struct {
			Error *cfAPIError `json:"error"`
		} `json:"replies"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return fail(fmt.Errorf("centrifugo API %s: %w", path, err))
	}
	if len(r.Replies) != len(batch) {
		return fail(fmt.Errorf("centrifugo API %s: %d replies to %d commands", path, len(r.Replies), len(batch)))
	}
	for i, rep := range r.Replies {
		if rep.Error != nil {
			errs[i] = rep.Error
		}
	}
	return errs
}

func (p *centrifugoPublisher) flush(ctx context.Context) error {
	return waitIdle(ctx, &p.mu, p.idle, func() bool { return p.out == 0 })
}

func (p *centrifugoPublisher) close() {
	for _, ch := range p.shards {
		close(ch)
	}
	p.wg.Wait()
	p.hc.CloseIdleConnections()
}
