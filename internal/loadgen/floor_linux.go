package loadgen

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Floor measures what this machine's kernel allows any WebSocket server on
// loopback, with no server code at all: Pairs TCP connections inside one
// process, Writers threads writing a Bytes-sized message to each connection
// in turn (one write per connection per round, as a fan-out of one message
// to Pairs subscribers does), and one epoll thread draining the other ends
// (as an efficient client would). A delivery to a distinct connection is a
// write, so its cost bounds every fan-out figure measured on this box.
func Floor(ctx context.Context, spec FloorSpec) (*FloorResult, error) {
	if spec.Pairs <= 0 || spec.Writers <= 0 || spec.Bytes <= 0 || spec.Duration <= 0 {
		return nil, fmt.Errorf("pairs, writers, bytes and duration must be positive")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	var files []*fileConn
	defer func() {
		for _, f := range files {
			f.close()
		}
	}()
	writeFDs := make([]int, 0, spec.Pairs)
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	defer unix.Close(ep)
	for i := 0; i < spec.Pairs; i++ {
		w, r, err := loopbackPair(ln)
		if err != nil {
			return nil, fmt.Errorf("pair %d of %d (each takes two file descriptors): %w", i+1, spec.Pairs, err)
		}
		files = append(files, w, r)
		writeFDs = append(writeFDs, w.fd)
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(r.fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, r.fd, &ev); err != nil {
			return nil, fmt.Errorf("epoll add: %w", err)
		}
	}

	var stop atomic.Bool
	var readerDone sync.WaitGroup
	var reads atomic.Int64
	readerDone.Add(1)
	go func() { // the clients: drain whatever is readable
		defer readerDone.Done()
		runtime.LockOSThread()
		evs := make([]unix.EpollEvent, 1024)
		buf := make([]byte, 64<<10)
		for !stop.Load() {
			n, err := unix.EpollWait(ep, evs, 50)
			if err != nil && err != unix.EINTR {
				return
			}
			for i := 0; i < n; i++ {
				for {
					k, err := unix.Read(int(evs[i].Fd), buf)
					if err != nil || k < len(buf) {
						break
					}
				}
			}
			reads.Add(int64(n))
		}
	}()

	msg := make([]byte, spec.Bytes)
	rounds := make([][]time.Duration, spec.Writers)
	counts := make([]int64, spec.Writers)
	var writers sync.WaitGroup
	deadline := time.Now().Add(spec.Duration)
	start := time.Now()
	for wi := 0; wi < spec.Writers; wi++ {
		// Writer wi owns every Writers-th connection: the writers of one
		// round run in parallel, as an edge's do on several cores.
		var mine []int
		for i := wi; i < len(writeFDs); i += spec.Writers {
			mine = append(mine, writeFDs[i])
		}
		writers.Add(1)
		go func() {
			defer writers.Done()
			runtime.LockOSThread()
			for ctx.Err() == nil && time.Now().Before(deadline) {
				t := time.Now()
				for _, fd := range mine {
					// A full socket (a reader behind) skips, as a real
					// server would queue; it does not count as a write.
					if n, err := unix.Write(fd, msg); err == nil && n > 0 {
						counts[wi]++
					}
				}
				rounds[wi] = append(rounds[wi], time.Since(t))
			}
		}()
	}
	writers.Wait()
	elapsed := time.Since(start)
	stop.Store(true)
	readerDone.Wait()

	res := &FloorResult{FloorSpec: spec, Elapsed: elapsed}
	var all []time.Duration
	for wi := range rounds {
		res.Writes += counts[wi]
		all = append(all, rounds[wi]...)
	}
	slices.Sort(all)
	res.Rounds = len(all)
	if len(all) > 0 {
		res.RoundMedian = all[len(all)/2]
	}
	res.WritesPerSec = float64(res.Writes) / elapsed.Seconds()
	if res.Writes > 0 {
		res.PerWrite = time.Duration(float64(elapsed) * float64(spec.Writers) / float64(res.Writes))
	}
	res.ReaderWakeups = reads.Load()
	return res, nil
}

// fileConn is one raw, non-blocking socket taken out of Go's poller.
type fileConn struct{ fd int }

func (f *fileConn) close() { _ = unix.Close(f.fd) }

// loopbackPair connects to ln and returns both ends as raw non-blocking
// sockets with TCP_NODELAY, as Go (and the edge) set it.
func loopbackPair(ln net.Listener) (w, r *fileConn, err error) {
	accepted := make(chan net.Conn, 1)
	acceptErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acceptErr <- err
			return
		}
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	var other net.Conn
	select {
	case other = <-accepted:
	case err := <-acceptErr:
		dialed.Close()
		return nil, nil, err
	}
	w, err = rawFD(dialed)
	if err != nil {
		other.Close()
		return nil, nil, err
	}
	r, err = rawFD(other)
	if err != nil {
		w.close()
		return nil, nil, err
	}
	return w, r, nil
}

// rawFD duplicates c's socket into a plain non-blocking descriptor and
// closes c, so the measurement bypasses Go's netpoller entirely.
func rawFD(c net.Conn) (*fileConn, error) {
	defer c.Close()
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("%T has no raw socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(s uintptr) { fd, dupErr = unix.Dup(int(s)) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &fileConn{fd: fd}, nil
}
