package edge

import (
	"context"
	"errors"
	"sync"
)

// outbox is a connection's bounded outbound queue. Producers (room fan-out,
// publish acks, replies) never block on it: when it is full the connection
// is a slow consumer and is closed, so one slow client never delays others.
//
// It runs its writer on demand: a goroutine is started when something is
// queued and nobody is writing, and it ends when the queue has stayed empty
// for a while (writerLinger). An idle connection therefore costs no writer
// goroutine (nor its stack), which is most of the edge's memory per
// connection at 100,000 connections, while a busy one keeps its writer.
type outbox struct {
	mu       sync.Mutex
	frames   [][]byte
	bytes    int
	maxMsgs  int
	maxBytes int
	closed   bool
	writing  bool   // a writer goroutine is running
	ping     bool   // a WebSocket ping is due
	start    func() // starts the writer (go c.writeLoop())
	wake     chan struct{}
	// space is closed (and cleared) when the writer takes the queue or the
	// queue closes: a paced producer (a long replay, see waitRoom) waits on
	// it instead of polling. Made only when someone waits.
	space chan struct{}
}

// errOutboxClosed ends a paced producer: the connection is ending.
var errOutboxClosed = errors.New("outbound queue closed")

func newOutbox(maxMsgs, maxBytes int, start func()) *outbox {
	return &outbox{maxMsgs: maxMsgs, maxBytes: maxBytes, start: start, wake: make(chan struct{}, 1)}
}

// push queues b. It returns false, and queues nothing, when the queue is
// closed or b would overflow it.
func (o *outbox) push(b []byte) (ok, overflow bool) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return false, false
	}
	if len(o.frames) >= o.maxMsgs || o.bytes+len(b) > o.maxBytes {
		o.mu.Unlock()
		return false, true
	}
	o.frames = append(o.frames, b)
	o.bytes += len(b)
	o.kickLocked()
	return true, false
}

// pingDue asks the writer to send a ping.
func (o *outbox) pingDue() {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.ping = true
	o.kickLocked()
}

// setStart installs the writer starter and starts it if frames wait.
func (o *outbox) setStart(start func()) {
	o.mu.Lock()
	o.start = start
	if len(o.frames) > 0 || o.ping || o.closed {
		o.kickLocked()
		return
	}
	o.mu.Unlock()
}

// kickLocked unlocks o.
func (o *outbox) kickLocked() {
	start := o.start
	if o.writing { // running or lingering: wake it
		o.mu.Unlock()
		select {
		case o.wake <- struct{}{}:
		default:
		}
		return
	}
	if start == nil { // no socket yet: setStart will start it
		o.mu.Unlock()
		return
	}
	o.writing = true
	o.mu.Unlock()
	start()
}

// take hands the writer everything queued, reusing spare as the next queue
// so steady traffic does not allocate, and whether a ping is due. empty
// means there is nothing to do now: the writer lingers on wake, then
// retires. closed says the connection is ending: the writer finishes it.
func (o *outbox) take(spare [][]byte) (out [][]byte, ping, empty, closed bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	out, ping = o.frames, o.ping
	if len(out) == 0 && !ping && !o.closed {
		return nil, false, true, false
	}
	o.frames = spare[:0]
	o.bytes = 0
	o.ping = false
	o.signalSpaceLocked()
	return out, ping, false, o.closed
}

// signalSpaceLocked wakes paced producers waiting for room.
func (o *outbox) signalSpaceLocked() {
	if o.space != nil {
		close(o.space)
		o.space = nil
	}
}

// waitRoom blocks until the queue is at most half full, counting n more
// bytes (or empty, so that a frame larger than half the byte bound still
// goes out alone), and reports errOutboxClosed or ctx's error instead if
// the connection or the caller ends first. A long replay calls it before
// each push: it then fills at most half the queue, never overflows it, and
// leaves the other half to live messages, replies and acks, which are
// never held back. It is a wait on the writer, so a replay goes exactly as
// fast as the client reads.
func (o *outbox) waitRoom(ctx context.Context, n int) error {
	for {
		o.mu.Lock()
		if o.closed {
			o.mu.Unlock()
			return errOutboxClosed
		}
		if len(o.frames) == 0 || (len(o.frames) < o.maxMsgs/2 && o.bytes+n <= o.maxBytes/2) {
			o.mu.Unlock()
			return nil
		}
		if o.space == nil {
			o.space = make(chan struct{})
		}
		space := o.space
		o.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// retire ends the writer if there is still nothing to do; false means work
// arrived and the writer must go on.
func (o *outbox) retire() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.frames) > 0 || o.ping || o.closed {
		return false
	}
	o.writing = false
	return true
}

// close stops accepting frames; what is queued can still be taken. It
// starts a writer if none runs, so the connection is finished either way.
func (o *outbox) close() {
	o.mu.Lock()
	o.closed = true
	o.signalSpaceLocked()
	o.kickLocked()
}
