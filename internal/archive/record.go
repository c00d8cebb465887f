package archive

import (
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// decode turns a stored chat message into a Record the way the edge turns it
// into a push (protocol.DecodeEnvelope, msg_id from the envelope or the
// Nats-Msg-Id header, the stored time), so history read from the archive is
// indistinguishable from history read from the stream. A message that cannot
// be archived comes back as a Poison with the reason.
func decode(seq uint64, stored time.Time, subject string, data []byte, hdr map[string][]string) (Record, *Poison) {
	poison := func(format string, args ...any) (Record, *Poison) {
		return Record{}, &Poison{Seq: seq, Subject: storable(subject), Reason: fmt.Sprintf(format, args...),
			Payload: data, Headers: hdr, Time: stored}
	}
	var kind Kind
	var name string
	switch {
	case strings.HasPrefix(subject, pjs.RoomPrefix):
		kind, name = KindRoom, subject[len(pjs.RoomPrefix):]
	case strings.HasPrefix(subject, pjs.DMPrefix):
		kind, name = KindDM, subject[len(pjs.DMPrefix):]
	case subject == pjs.BroadcastSubject:
		kind = KindBroadcast
	default:
		return poison("subject %q is not chat.room.<room>, chat.dm.<user> or chat.broadcast", subject)
	}
	if kind != KindBroadcast && !protocol.ValidName(name) {
		// chat.room.a.b is stored by the stream (chat.>) but no client can
		// name it: not a room.
		return poison("subject %q: %q is not a valid %s name", subject, name, kind)
	}
	env := protocol.DecodeEnvelope(data)
	msgID := env.MsgID
	if msgID == "" {
		msgID = first(hdr, jetstream.MsgIDHeader)
	}
	return Record{
		Seq:     seq,
		Subject: subject,
		Kind:    kind,
		Name:    name,
		MsgID:   storable(msgID),
		From:    storable(env.From),
		Time:    stored.Truncate(time.Millisecond),
		Data:    protocol.PushData(env.Data),
		Headers: hdr,
	}, nil
}

func first(h map[string][]string, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// storable makes a string fit every store: PostgreSQL text refuses NUL bytes
// and invalid UTF-8. The edge would render both as JSON escapes of a
// replacement character or \u0000; only the NUL case differs, and only for a
// backend that put a NUL into "from" or "msg_id".
func storable(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// fromMsg decodes a message fetched from the archive consumer.
func fromMsg(m jetstream.Msg) (Record, *Poison, error) {
	md, err := m.Metadata()
	if err != nil {
		return Record{}, nil, fmt.Errorf("message metadata: %w", err)
	}
	var hdr map[string][]string
	if h := m.Headers(); len(h) > 0 {
		hdr = make(map[string][]string, len(h))
		for k, v := range h {
			vs := make([]string, len(v))
			for i := range v {
				vs[i] = storable(v[i])
			}
			hdr[storable(k)] = vs
		}
	}
	r, p := decode(md.Sequence.Stream, md.Timestamp, m.Subject(), m.Data(), hdr)
	return r, p, nil
}

// pushMsg is the record as the edge's msg push carries it.
func pushMsg(r *Record) *protocol.Msg {
	m := &protocol.Msg{Op: protocol.OpMsg, Seq: r.Seq, MsgID: r.MsgID, From: r.From, TS: r.Time.UnixMilli(), Data: r.Data}
	switch r.Kind {
	case KindRoom:
		m.Room = r.Name
	case KindDM:
		m.To = r.Name
	}
	return m
}
