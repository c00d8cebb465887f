package edge

import "sync"

// outbox is a connection's bounded outbound queue. Producers (room fan-out,
// publish acks, replies) never block on it: when it is full the connection
// is a slow consumer and is closed, so one slow client never delays others.
type outbox struct {
	mu       sync.Mutex
	frames   [][]byte
	bytes    int
	maxMsgs  int
	maxBytes int
	closed   bool
	wake     chan struct{} // capacity 1: "there is something to write"
}

func newOutbox(maxMsgs, maxBytes int) *outbox {
	return &outbox{maxMsgs: maxMsgs, maxBytes: maxBytes, wake: make(chan struct{}, 1)}
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
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return true, false
}

// take hands the writer everything queued, reusing spare as the next queue
// so steady traffic does not allocate.
func (o *outbox) take(spare [][]byte) [][]byte {
	o.mu.Lock()
	out := o.frames
	o.frames = spare[:0]
	o.bytes = 0
	o.mu.Unlock()
	return out
}

// close stops accepting frames; what is queued can still be taken.
func (o *outbox) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}
