package edge

import (
	"testing"
	"time"
)

// A closed poller's loop must end: one left blocked in epoll_wait on a
// closed fd wakes at the next signal (EINTR) and waits again on that fd
// number, which by then may be another edge's poller, whose events it then
// steals (connections hang).
func TestPollerCloseEndsItsLoop(t *testing.T) {
	for range 3 {
		p, err := newPoller()
		if err != nil {
			t.Skipf("no epoll here: %v", err)
		}
		p.close()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Fatal("the poller's loop still runs after close")
		}
		if err := p.arm(nil, armed{}); err == nil {
			t.Fatal("a closed poller accepted a connection")
		}
	}
}
