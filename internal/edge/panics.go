package edge

import (
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/gorilla/websocket"
)

// A bug met while serving one client must cost that client its connection,
// never the process: an unrecovered panic on any goroutine ends every
// connection of the edge (and, in dev mode, the embedded NATS server,
// presence and archiver with it). Every goroutine the edge starts for a
// connection or a live message therefore defers one of these.

// recovered logs a recovered panic with its stack and counts it.
func (e *Edge) recovered(where string, v any, log *slog.Logger) {
	e.metrics.Panics.WithLabelValues(where).Inc()
	log.Error("recovered from a panic", "where", where, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
}

// contain is deferred by work done for c outside its reader and writer
// (request handling, timers): a panic closes c with 1011, and only c.
func (c *Conn) contain(where string) {
	if v := recover(); v != nil {
		c.e.recovered(where, v, c.logger())
		c.close(websocket.CloseInternalServerErr, "internal error")
	}
}
