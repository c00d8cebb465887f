package edge

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/parley-mesh/parley/internal/protocol"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// natsFeed is the Feed on a real NATS connection: a core subscription to the
// topic's republished live subject, and Direct Get for the last sequence.
type natsFeed struct {
	nc      *nats.Conn
	reader  *streamReader
	log     *slog.Logger
	dropped func()
	// gap counts repairs: messages read back, and gaps that could not be
	// closed (the stream no longer had them, or NATS did not answer).
	gapRepaired   func(msgs int)
	gapUnrepaired func()
	// pendingMsgs bounds what nats.go buffers per topic before it drops
	// (and reports a slow consumer); gap repair covers such drops.
	pendingMsgs int
}

func (f *natsFeed) Subscribe(topic string, deliver func(Delivery)) (func(), error) {
	target := pushTarget(topic)
	sub, err := f.nc.Subscribe(pjs.LiveSubject(topic), func(m *nats.Msg) {
		d, err := decodeLive(m, target)
		if err != nil {
			f.dropped()
			f.log.Warn("dropping live message", "subject", m.Subject, "err", err)
			return
		}
		deliver(d)
	})
	if err != nil {
		return nil, fmt.Errorf("%w: subscribe %s: %w", protocol.ErrUnavailable, topic, err)
	}
	if f.pendingMsgs > 0 {
		_ = sub.SetPendingLimits(f.pendingMsgs, -1)
	}
	// Wait until the server has the subscription: the caller's next step is
	// reading the stream's last sequence, and everything stored after that
	// must arrive here.
	if err := f.nc.FlushTimeout(5 * time.Second); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("%w: subscribe %s: %w", protocol.ErrUnavailable, topic, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

func (f *natsFeed) LastSeq(ctx context.Context, topic string) (uint64, error) {
	return f.reader.lastSeq(ctx, topic)
}

// maxRepair bounds one gap repair; a larger gap is logged and counted.
const maxRepair = 10_000

func (f *natsFeed) Repair(topic string, from, upTo uint64) []Delivery {
	// A replica answering Direct Get may trail the leader that republished:
	// retry briefly until the gap's last message (which exists: the live
	// message named it) is readable.
	var got []Delivery
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 50 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got, _, err = f.reader.readRange(ctx, topic, from, upTo, maxRepair)
		cancel()
		if err == nil && len(got) > 0 && got[len(got)-1].Seq == upTo {
			f.gapRepaired(len(got))
			f.log.Info("repaired live gap", "topic", topic, "from", from, "to", upTo, "msgs", len(got))
			return got
		}
	}
	f.gapUnrepaired()
	f.log.Warn("live gap not fully repaired", "topic", topic, "from", from, "to", upTo, "read", len(got), "err", err)
	return got
}

// target is where a topic's pushes say they belong.
type target struct{ room, to string }

func pushTarget(topic string) target {
	switch {
	case strings.HasPrefix(topic, pjs.RoomPrefix):
		return target{room: topic[len(pjs.RoomPrefix):]}
	case strings.HasPrefix(topic, pjs.DMPrefix):
		return target{to: topic[len(pjs.DMPrefix):]}
	}
	return target{}
}

// decodeLive turns a republished message into a Delivery, encoding the push
// frame once for every local subscriber of the topic.
func decodeLive(m *nats.Msg, t target) (Delivery, error) {
	seq, err := strconv.ParseUint(m.Header.Get(pjs.HeaderSequence), 10, 64)
	if err != nil || seq == 0 {
		return Delivery{}, fmt.Errorf("no %s header", pjs.HeaderSequence)
	}
	last, _ := strconv.ParseUint(m.Header.Get(pjs.HeaderLastSeq), 10, 64)
	var ts int64
	if t, err := time.Parse(time.RFC3339Nano, m.Header.Get(pjs.HeaderTime)); err == nil {
		ts = t.UnixMilli()
	}
	env := protocol.DecodeEnvelope(m.Data)
	msgID := env.MsgID
	if msgID == "" {
		msgID = m.Header.Get(jetstream.MsgIDHeader)
	}
	frame := protocol.AppendMsg(make([]byte, 0, len(m.Data)+96+len(t.room)), &protocol.Msg{
		Op: protocol.OpMsg, Room: t.room, To: t.to, Seq: seq, MsgID: msgID, From: env.From, TS: ts, Data: env.Data,
	})
	return Delivery{Seq: seq, LastSeq: last, Frame: frame}, nil
}
