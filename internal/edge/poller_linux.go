package edge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller holds idle connections without a goroutine each: an idle
// connection's reader registers its socket here (one-shot) and ends; when
// the socket becomes readable (or the peer hangs up) a reader goroutine is
// started for it again. At 100,000 idle connections a parked goroutine per
// connection is the largest remaining cost per connection (its stack).
type poller struct {
	epfd int
	// wakefd is an eventfd in the epoll set (as id 0, which no connection
	// has): close writes to it so that run returns and closes epfd itself.
	// Closing epfd under a blocked epoll_wait does not wake it, and the
	// old loop, woken later by a signal (EINTR), would wait on the fd
	// number again, by then maybe another edge's poller, and steal its
	// events.
	wakefd int
	closed atomic.Bool
	done   chan struct{} // closed when run has returned

	mu    sync.Mutex
	conns map[int32]*Conn
	next  int32
}

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 0}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	p := &poller{epfd: epfd, wakefd: wakefd, conns: make(map[int32]*Conn), done: make(chan struct{})}
	go p.run()
	return p, nil
}

// armed is one registration about to be made: prepared while the reader
// still owns c, made after c is marked parked.
type armed struct {
	op int
	ev unix.EpollEvent
}

// prepare gives c an id and decides the epoll operation. It runs while the
// reader owns c: once the fd is armed the poller may hand c to another
// reader at once, so arm itself touches nothing of c's mutable state.
func (p *poller) prepare(c *Conn) armed {
	if c.pollID == 0 {
		p.mu.Lock()
		for {
			p.next++
			if p.next <= 0 {
				p.next = 1
			}
			if _, taken := p.conns[p.next]; !taken {
				break
			}
		}
		c.pollID = p.next
		p.conns[c.pollID] = c
		p.mu.Unlock()
	}
	a := armed{op: unix.EPOLL_CTL_MOD, ev: unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: c.pollID}}
	if !c.pollAdded {
		a.op = unix.EPOLL_CTL_ADD
		c.pollAdded = true
	}
	return a
}

// arm registers the socket for one readiness event. The fd is used inside
// RawConn.Control, so a connection closed meanwhile is never touched (and
// its fd number, possibly reused, never registered).
func (p *poller) arm(rc syscall.RawConn, a armed) error {
	if p.closed.Load() {
		return errPollerClosed
	}
	var ctlErr error
	err := rc.Control(func(fd uintptr) {
		ctlErr = unix.EpollCtl(p.epfd, a.op, int(fd), &a.ev)
		if errors.Is(ctlErr, unix.ENOENT) && a.op == unix.EPOLL_CTL_MOD {
			ctlErr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &a.ev)
		}
	})
	return errors.Join(err, ctlErr)
}

// forget drops c (its socket leaves the epoll set when it is closed).
func (p *poller) forget(c *Conn) {
	if c.pollID == 0 {
		return
	}
	p.mu.Lock()
	delete(p.conns, c.pollID)
	p.mu.Unlock()
}

func (p *poller) run() {
	defer func() {
		_ = unix.Close(p.epfd)
		_ = unix.Close(p.wakefd)
		close(p.done)
	}()
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == 0 { // close
				return
			}
			p.mu.Lock()
			c := p.conns[ev.Fd]
			p.mu.Unlock()
			if c != nil {
				c.wake()
			}
		}
	}
}

// close ends run, which closes the poller's fds.
func (p *poller) close() {
	if p.closed.Swap(true) {
		return
	}
	var one [8]byte // eventfd takes a uint64 in the host's byte order
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(p.wakefd, one[:])
}

// errPollerClosed: the edge is shutting down; the reader keeps its
// connection.
var errPollerClosed = errors.New("poller closed")
