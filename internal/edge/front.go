package edge

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// front sits between a plain-TCP listener and net/http. It reads the start
// of every connection itself: a WebSocket upgrade of one of the client
// endpoints is read and served here, everything else goes on to net/http
// with the bytes already read put back in front.
//
// Why: net/http gives every connection a 4 KiB buffered reader and a 4 KiB
// buffered writer, and a hijacked connection never returns them, so each
// WebSocket leaves 8 KiB of garbage behind on top of net/http's own request
// state, and a connect storm spends a third of its CPU collecting it. net/http
// also starts a background read per request that Hijack must abort (a
// goroutine, two deadline changes and a wake-up). Here the reader comes from
// a pool and goes back to it when the upgrade is done, and the 101 answer is
// written straight to the socket. The request goes through the same handler
// as net/http's (the Host guard, the mux, serveWS or serveCentrifugo), so
// every check is the same on both paths.
//
// TLS listeners do not use it (net/http keeps HTTP/2 and the TLS state).
type front struct {
	inner         net.Listener
	handler       http.Handler
	headerTimeout time.Duration
	maxHeader     int
	paths         []string // request-line prefixes served here, e.g. "GET /ws"
	log           *slog.Logger
	// onPanic is told of a panic in the handler; the connection is closed
	// and the worker goes on (net/http recovers its handlers' panics too).
	onPanic func(v any)

	toHTTP chan net.Conn
	work   chan net.Conn // to an idle worker
	done   chan struct{}
	looped chan struct{} // closed when acceptLoop has returned
	once   sync.Once
	err    error // why accepting ended, once done is closed

	mu        sync.Mutex
	reading   map[net.Conn]struct{} // connections whose request is being read
	handshake sync.WaitGroup        // requests read or served here
}

func newFront(inner net.Listener, handler http.Handler, headerTimeout time.Duration, maxHeader int, log *slog.Logger, onPanic func(any), paths ...string) *front {
	f := &front{
		inner: inner, handler: handler, headerTimeout: headerTimeout, maxHeader: maxHeader, paths: paths, log: log, onPanic: onPanic,
		toHTTP:  make(chan net.Conn),
		work:    make(chan net.Conn),
		looped:  make(chan struct{}),
		done:    make(chan struct{}),
		reading: map[net.Conn]struct{}{},
	}
	go f.acceptLoop()
	return f
}

// Accept is net/http's: the connections that are not upgrades served here.
func (f *front) Accept() (net.Conn, error) {
	select {
	case c := <-f.toHTTP:
		return c, nil
	case <-f.done:
		return nil, f.err
	}
}

// Close stops accepting and cuts short the requests still being read;
// upgrades already read finish (Edge.Shutdown's drain handles them).
func (f *front) Close() error {
	err := f.inner.Close()
	f.stop(net.ErrClosed)
	f.mu.Lock()
	for c := range f.reading {
		_ = c.SetReadDeadline(aLongTimeAgo)
	}
	f.mu.Unlock()
	return err
}

// Addr is the listener's.
func (f *front) Addr() net.Addr { return f.inner.Addr() }

// wait returns when every request read here has been served, or ctx ends.
func (f *front) wait(ctx context.Context) error {
	select { // no handshake.Add after this: the accept loop is over
	case <-f.looped:
	case <-ctx.Done():
		return ctx.Err()
	}
	done := make(chan struct{})
	go func() { f.handshake.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var aLongTimeAgo = time.Unix(1, 0)

func (f *front) stop(err error) {
	f.once.Do(func() {
		f.err = err
		close(f.done)
	})
}

// acceptLoop accepts until the listener fails; like net/http it waits and
// retries on temporary errors (out of file descriptors).
func (f *front) acceptLoop() {
	defer close(f.looped)
	var delay time.Duration
	for {
		c, err := f.inner.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				f.log.Warn("accept failed; retrying", "err", err, "retry_in", delay)
				select {
				case <-time.After(delay):
					continue
				case <-f.done:
					return
				}
			}
			f.stop(err)
			return
		}
		delay = 0
		f.handshake.Add(1)
		select {
		case f.work <- c:
		default:
			go f.worker(c)
		}
	}
}

// workerIdle is how long a worker waits for another connection before it
// ends.
const workerIdle = 10 * time.Second

// worker serves c, then the connections handed to it while it waits. A
// request's path (upgrade, token check, the DM subscription, the 101) runs
// deep: a new goroutine's stack grew and was copied three or four times per
// connection, an eighth of a connect storm's CPU. A worker's stack is grown
// already.
func (f *front) worker(c net.Conn) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		f.serve(c)
		idle.Reset(workerIdle)
		select {
		case c = <-f.work:
		case <-idle.C:
			return
		case <-f.done:
			return
		}
	}
}

func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// frontReader is a pooled request reader: a bufio.Reader over a limited
// view of the connection, so a request head cannot exceed maxHeader, and
// the writer half handed to the upgrader. gorilla/websocket only borrows the
// writer's free buffer to format the 101 answer in (it writes that to the
// socket itself), so both go back to the pool after the upgrade.
type frontReader struct {
	lr io.LimitedReader
	br *bufio.Reader
	bw *bufio.Writer
}

var frontReaders = sync.Pool{New: func() any {
	r := &frontReader{}
	r.br = bufio.NewReaderSize(&r.lr, 4096)
	r.bw = bufio.NewWriterSize(failWriter{}, 512)
	return r
}}

// failWriter is under the upgrader's writer: nothing is written through it.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, http.ErrHijacked }

func (f *front) serve(c net.Conn) {
	defer f.handshake.Done()
	fr := frontReaders.Get().(*frontReader)
	fr.lr = io.LimitedReader{R: c, N: int64(f.maxHeader)}
	fr.br.Reset(&fr.lr)
	release := func() {
		fr.lr.R = nil
		fr.br.Reset(nil)
		frontReaders.Put(fr)
	}
	f.mu.Lock()
	f.reading[c] = struct{}{}
	f.mu.Unlock()
	select {
	case <-f.done:
		_ = c.SetReadDeadline(aLongTimeAgo) // Close ran before this connection was listed
	default:
		_ = c.SetReadDeadline(time.Now().Add(f.headerTimeout))
	}
	ours, err := f.isUpgrade(fr.br)
	var req *http.Request
	if ours && err == nil {
		req, err = http.ReadRequest(fr.br)
	}
	f.mu.Lock()
	delete(f.reading, c)
	f.mu.Unlock()
	switch {
	case !ours:
		// net/http's: what was read goes back in front of the socket.
		pre := bytes.Clone(peekBuffered(fr.br))
		release()
		if err != nil && len(pre) == 0 {
			_ = c.Close() // closed or silent before a byte: nothing to answer
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		select {
		case f.toHTTP <- &prefixConn{Conn: c, pre: pre}:
		case <-f.done:
			_ = c.Close()
		}
		return
	case err != nil:
		status := http.StatusBadRequest
		if fr.lr.N <= 0 {
			status = http.StatusRequestHeaderFieldsTooLarge
		}
		release()
		var ne net.Error
		if !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, io.EOF) {
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(c, "HTTP/1.1 "+strconv.Itoa(status)+" "+http.StatusText(status)+"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		}
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	req.RemoteAddr = c.RemoteAddr().String()
	w := &frontResponse{conn: c, fr: fr}
	defer func() {
		if v := recover(); v != nil {
			// The reader is not returned: the handler may still hold it.
			f.onPanic(v)
			_ = c.Close()
		}
	}()
	f.handler.ServeHTTP(w, req)
	if w.hijacked {
		if !w.keptReader {
			release()
		}
		return
	}
	release()
	w.finish()
	_ = c.Close()
}

// isUpgrade reports whether the request line starts with one of the paths
// served here, reading no more than it needs to tell.
func (f *front) isUpgrade(br *bufio.Reader) (bool, error) {
	for {
		b := peekBuffered(br)
		undecided := false
		for _, p := range f.paths {
			if m := min(len(b), len(p)); string(b[:m]) != p[:m] {
				continue
			}
			if len(b) <= len(p) { // a prefix of p so far: read on
				undecided = true
				continue
			}
			switch b[len(p)] { // "GET /ws" is not "GET /wsx"
			case ' ', '?':
				return true, nil
			}
		}
		if !undecided {
			return false, nil
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return false, err
		}
	}
}

func peekBuffered(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return b
}

// prefixConn is a connection with bytes already read put back in front.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// frontResponse is the http.ResponseWriter of an upgrade read by front:
// Hijack hands the socket to the upgrader; an answer that is not an upgrade
// (a refusal) is written whole, with Connection: close, when the handler
// returns.
type frontResponse struct {
	conn       net.Conn
	fr         *frontReader
	header     http.Header
	status     int
	body       []byte
	hijacked   bool
	keptReader bool // the upgrader holds br (the client sent bytes early)
}

func (w *frontResponse) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (w *frontResponse) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *frontResponse) Write(b []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, b...)
	return len(b), nil
}

// Hijack gives the upgrader the socket. The reader is the pooled one: the
// upgrader keeps it only if the client sent bytes after its request, before
// the answer (then it is not returned to the pool).
func (w *frontResponse) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	w.hijacked = true
	if w.fr.br.Buffered() > 0 {
		w.keptReader = true
		w.fr.lr.N = math.MaxInt64 // from here on it reads frames, not a request head
	}
	return w.conn, bufio.NewReadWriter(w.fr.br, w.fr.bw), nil
}

func (w *frontResponse) finish() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h := w.Header()
	h.Set("Content-Length", strconv.Itoa(len(w.body)))
	h.Set("Connection", "close")
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 " + strconv.Itoa(w.status) + " " + http.StatusText(w.status) + "\r\n")
	_ = h.Write(&b)
	b.WriteString("\r\n")
	b.Write(w.body)
	_ = w.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = w.conn.Write(b.Bytes())
}
