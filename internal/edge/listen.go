package edge

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// listen opens the HTTP listener. With reusePort several processes bind the
// same address: one process holds at most as many sockets as its open-file
// limit allows, so a host serves more connections with several edges.
//
// TCP keepalive is off: WebSockets have the edge's pings and read timeouts,
// plain HTTP its idle timeout, and Go's default (on, 15 s) costs four
// setsockopt calls per accepted connection, 3 % of a connect storm's CPU.
func listen(ctx context.Context, addr string, reusePort bool) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	if reusePort {
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return lc.Listen(ctx, "tcp", addr)
}
