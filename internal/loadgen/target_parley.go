package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// parleyDriver speaks docs/protocol.md: credentials in the upgrade's query
// (?token= or, on an insecure edge, ?user=), a sub request, its reply, then
// msg pushes, several to a frame split on '\n'. The edge's WebSocket pings
// are answered by gorilla's default handler.
type parleyDriver struct{}

func (parleyDriver) url(base, user, token string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	q := u.Query()
	if token != "" {
		q.Set("token", token)
	} else {
		q.Set("user", user)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// parleyReply is the part of a reply the driver looks at.
type parleyReply struct {
	ID    int64 `json:"id"`
	OK    bool  `json:"ok"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (parleyDriver) subscribe(c *wsConn, _, _, room string, onData func([]byte)) error {
	req, _ := json.Marshal(map[string]any{"id": 1, "op": "sub", "room": room})
	if err := c.write(websocket.TextMessage, req); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for done := false; !done; {
		b, err := c.next(deadline)
		if err != nil {
			return err
		}
		err = splitLines(b, func(line []byte) error {
			if done {
				onData(line) // a push right after the reply, in the same frame
				return nil
			}
			var r parleyReply
			if json.Unmarshal(line, &r) != nil || r.ID != 1 {
				onData(line)
				return nil
			}
			if r.Error != nil {
				return &refusedError{"sub", r.Error.Code + ": " + r.Error.Message}
			}
			done = true
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (parleyDriver) read(_ *wsConn, b []byte, onData func([]byte)) error {
	return splitLines(b, func(line []byte) error { onData(line); return nil })
}

// parleyPublisher is a backend service publishing to the edges' stream
// through JetStream (chat.room.<room>, the envelope of docs/protocol.md):
// a message counts as published when the stream acked it.
type parleyPublisher struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	futs chan parleyFuture
	wg   sync.WaitGroup
	mu   sync.Mutex
	out  int // publishes without their done call yet
	idle *sync.Cond
}

type parleyFuture struct {
	f    jetstream.PubAckFuture
	done func(error)
}

func newParleyPublisher(natsURL string) (*parleyPublisher, error) {
	nc, err := nats.Connect(natsURL, nats.Name("parley-loadgen-publisher"))
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		nc.Close()
		return nil, err
	}
	p := &parleyPublisher{nc: nc, js: js, futs: make(chan parleyFuture, 8192)}
	p.idle = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go func() { // acks come in publish order: one goroutine follows them
		defer p.wg.Done()
		for pf := range p.futs {
			var err error
			select {
			case <-pf.f.Ok():
			case err = <-pf.f.Err():
			}
			pf.done(err)
			p.mu.Lock()
			p.out--
			if p.out == 0 {
				p.idle.Broadcast()
			}
			p.mu.Unlock()
		}
	}()
	return p, nil
}

func (p *parleyPublisher) publish(room string, body []byte, done func(error)) {
	msg := nats.NewMsg("chat.room." + room)
	msg.Data = fmt.Appendf(make([]byte, 0, len(body)+32), `{"from":"loadgen","data":%s}`, body)
	for tries := 0; ; tries++ {
		f, err := p.js.PublishMsgAsync(msg)
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && tries < 100 {
			// The window is full and the server slow to ack: wait, retry.
			select {
			case <-p.js.PublishAsyncComplete():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			done(err)
			return
		}
		p.mu.Lock()
		p.out++
		p.mu.Unlock()
		p.futs <- parleyFuture{f, done}
		return
	}
}

func (p *parleyPublisher) flush(ctx context.Context) error {
	return waitIdle(ctx, &p.mu, p.idle, func() bool { return p.out == 0 })
}

func (p *parleyPublisher) close() {
	close(p.futs)
	p.wg.Wait()
	p.nc.Close()
}

// waitIdle waits on cond until idle() (called with mu held) or ctx ends.
func waitIdle(ctx context.Context, mu *sync.Mutex, cond *sync.Cond, idle func() bool) error {
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		cond.Broadcast()
		mu.Unlock()
	})
	defer stop()
	mu.Lock()
	defer mu.Unlock()
	for !idle() {
		if err := ctx.Err(); err != nil {
			return err
		}
		cond.Wait()
	}
	return nil
}
