package loadgen

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
)

// natsDriver speaks the NATS client protocol over nats-server's WebSocket
// listener (binary frames): after the server's INFO, CONNECT, SUB of the
// room's subject and a PING whose PONG confirms the subscription; then MSG
// lines with their payloads. A frame may hold several protocol lines or
// part of one, so the bytes are parsed as a stream. The server's PINGs are
// answered with PONG.
type natsDriver struct{}

func (*natsDriver) url(base, _, _ string) (string, error) { return base, nil }

var natsHello = []byte("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"echo\":false,\"name\":\"parley-loadgen\"}\r\n")

func (d *natsDriver) subscribe(c *wsConn, _, _, room string, onData func([]byte)) error {
	msg := append(append([]byte{}, natsHello...), "SUB "+room+" 1\r\nPING\r\n"...)
	if err := c.write(websocket.BinaryMessage, msg); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for ponged := false; !ponged; {
		b, err := c.next(deadline)
		if err != nil {
			return err
		}
		if err := d.feed(c, b, onData, func() { ponged = true }); err != nil {
			return err
		}
	}
	return nil
}

func (d *natsDriver) read(c *wsConn, b []byte, onData func([]byte)) error {
	return d.feed(c, b, onData, func() {})
}

var crlf = []byte("\r\n")

// feed parses b after what is left of the connection's earlier frames.
func (*natsDriver) feed(c *wsConn, b []byte, onData func([]byte), onPong func()) error {
	buf := b
	if len(c.pending) > 0 {
		buf = append(c.pending, b...)
	}
lines:
	for {
		i := bytes.Index(buf, crlf)
		if i < 0 {
			break
		}
		line := buf[:i]
		switch {
		case bytes.HasPrefix(line, []byte("MSG ")):
			// MSG <subject> <sid> [reply-to] <#bytes>
			sp := bytes.LastIndexByte(line, ' ')
			n, err := strconv.Atoi(string(line[sp+1:]))
			if err != nil || n < 0 {
				return fmt.Errorf("nats: bad MSG line %q", line)
			}
			if len(buf) < i+2+n+2 {
				break lines // the payload is still to come
			}
			onData(buf[i+2 : i+2+n])
			buf = buf[i+2+n+2:]
			continue
		case bytes.Equal(line, []byte("PING")):
			if err := c.write(websocket.BinaryMessage, []byte("PONG\r\n")); err != nil {
				return err
			}
		case bytes.Equal(line, []byte("PONG")):
			onPong()
		case bytes.HasPrefix(line, []byte("-ERR")):
			return &refusedError{"nats", string(line)}
		}
		// INFO, +OK: nothing to do.
		buf = buf[i+2:]
	}
	if len(buf) > 0 {
		c.pending = bytes.Clone(buf)
	} else {
		c.pending = nil
	}
	return nil
}

// natsPublisher publishes with nats.go on the server's client port, core
// NATS (no acks): a message counts as published when nats.go took it.
type natsPublisher struct{ nc *nats.Conn }

func newNATSPublisher(url string) (*natsPublisher, error) {
	nc, err := nats.Connect(url, nats.Name("parley-loadgen-publisher"))
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	return &natsPublisher{nc: nc}, nil
}

func (p *natsPublisher) publish(room string, body []byte, done func(error)) {
	done(p.nc.Publish(room, body))
}

func (p *natsPublisher) flush(ctx context.Context) error { return p.nc.FlushWithContext(ctx) }

func (p *natsPublisher) close() { p.nc.Close() }
