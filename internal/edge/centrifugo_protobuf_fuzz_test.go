package edge

import (
	"encoding/binary"
	"testing"

	cfp "github.com/centrifugal/protocol"
)

// FuzzCentrifugoProtobufSplit feeds arbitrary frames to the splitting and
// decoding of Protobuf commands: it must never panic, every command must
// lie inside the frame, and the split must consume the frame exactly or
// stop at an error.
func FuzzCentrifugoProtobufSplit(f *testing.F) {
	ping, _ := (&cfp.Command{Id: 7, Ping: &cfp.PingRequest{}}).MarshalCF()
	valid := append(binary.AppendUvarint(nil, uint64(len(ping))), ping...)
	for _, seed := range [][]byte{
		nil, {0}, {0x80}, {5, 1}, valid, append(valid, valid...), append(valid, 0x80),
		append(binary.AppendUvarint(nil, 1<<62), 1, 2),
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		rest := frame
		for len(rest) > 0 {
			cmd, next, err := cfNextProtobuf(rest)
			if err != nil {
				return
			}
			if len(cmd)+len(next) >= len(rest) {
				t.Fatalf("no progress: %d + %d of %d bytes", len(cmd), len(next), len(rest))
			}
			_ = (&cfp.Command{}).UnmarshalCF(cmd)
			rest = next
		}
	})
}
