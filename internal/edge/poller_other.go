//go:build !linux

package edge

import (
	"errors"
	"syscall"
)

// poller is Linux-only (epoll); elsewhere idle readers park in a shallow
// wait instead (see frameReader.idle).
type poller struct{}

type armed struct{}

func newPoller() (*poller, error)       { return nil, errors.New("no epoll on this platform") }
func (p *poller) prepare(c *Conn) armed { return armed{} }
func (p *poller) arm(rc syscall.RawConn, a armed) error {
	return errors.New("no epoll on this platform")
}
func (p *poller) forget(c *Conn) {}
func (p *poller) close()         {}
