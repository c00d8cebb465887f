package edge

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// A panic in the handler of an upgrade read by front costs that connection,
// not the process, and the worker that met it serves the next one.
func TestFrontRecoversAPanicInTheHandler(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var panics atomic.Int32
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("boom") != "" {
			panic("boom")
		}
		w.WriteHeader(http.StatusTeapot)
	})
	f := newFront(ln, handler, time.Second, 4096, slog.New(slog.DiscardHandler), func(any) { panics.Add(1) }, "GET /ws")
	defer f.Close()
	ask := func(path string) (*http.Response, error) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		return http.ReadResponse(bufio.NewReader(c), nil)
	}
	for range 3 {
		if resp, err := ask("/ws?boom=1"); err == nil {
			t.Fatalf("a panicking handler answered %s", resp.Status)
		}
		resp, err := ask("/ws")
		if err != nil || resp.StatusCode != http.StatusTeapot {
			t.Fatalf("after a panic: %v %v", resp, err)
		}
	}
	if got := panics.Load(); got != 3 {
		t.Errorf("onPanic told %d times, want 3", got)
	}
}
