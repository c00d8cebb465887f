package edge

import (
	"encoding/binary"
	"errors"
	"fmt"

	cfp "github.com/centrifugal/protocol"

	"github.com/parley-mesh/parley/protocol"
)

// Centrifugo's Protobuf format over WebSocket: binary frames, each holding
// one or more commands (client to server) or replies (server to client),
// every one prefixed with its length as an unsigned varint. The server's
// ping is an empty Reply (a prefix of 0), the client's pong an empty
// Command. The writer frames replies (writeBatch); this file splits and
// decodes commands.
//
// Every length here comes from the client. The frame itself is already
// bounded (the reader keeps at most --max-frame-bytes of it and discards
// larger ones), and a command's length must fit what is left of the frame:
// anything else is a malformed frame, answered with Centrifugo's "bad
// request" disconnect, never a slice past the frame or an allocation the
// length asked for.

// Malformed length prefixes.
var (
	errCFTruncatedLength = errors.New("truncated length prefix")
	errCFLengthOverflow  = errors.New("length prefix overflows 64 bits")
	errCFLengthBeyond    = errors.New("length beyond the end of the frame")
)

// cfNextProtobuf splits the next length-delimited command off frame: the
// command's bytes (which alias frame) and what follows.
func cfNextProtobuf(frame []byte) (cmd, rest []byte, err error) {
	l, n := binary.Uvarint(frame)
	switch {
	case n == 0:
		return nil, nil, errCFTruncatedLength
	case n < 0:
		return nil, nil, errCFLengthOverflow
	}
	// Compare in uint64: l is the client's, up to 2^64-1, and converting
	// it to int first could wrap it below the bound.
	if l > uint64(len(frame)-n) {
		return nil, nil, fmt.Errorf("%w: %d bytes announced, %d left", errCFLengthBeyond, l, len(frame)-n)
	}
	end := n + int(l)
	return frame[n:end], frame[end:], nil
}

// handleCentrifugoProtobuf runs a binary frame's commands in order. A
// command that came before a malformed one still runs, as in the JSON
// format; the malformed one ends the connection (3501).
func (c *Conn) handleCentrifugoProtobuf(frame []byte) {
	for len(frame) > 0 {
		b, rest, err := cfNextProtobuf(frame)
		if err != nil {
			c.cfMalformed(err)
			return
		}
		cmd := &cfp.Command{}
		if err := cmd.UnmarshalCF(b); err != nil {
			c.cfMalformed(err)
			return
		}
		frame = rest
		c.cfCommand(cmd)
		select {
		case <-c.closing:
			return
		default:
		}
	}
}

func (c *Conn) cfMalformed(err error) {
	c.debug("malformed Protobuf frame", "err", err)
	c.count("invalid", protocol.CodeBadRequest)
	c.close(cfDisconnectBadRequest, "bad request: malformed command")
}
