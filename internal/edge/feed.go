package edge

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// liveShards spreads live subscriptions over a few dispatcher goroutines.
// nats.go gives every callback subscription a goroutine of its own; an edge
// holds one subscription per room and one per connected user (direct
// messages), so with 100,000 users that would be 100,000 goroutines. Channel
// subscriptions instead share one channel per shard; a topic always maps to
// the same shard, so its messages keep their order.
type liveShards struct {
	chans    []chan *nats.Msg
	handlers sync.Map // *nats.Subscription → func(*nats.Msg)
	done     chan struct{}
	// onPanic hears of a panic while handling one message: that message is
	// dropped (gap repair reads it back when the next one shows the gap),
	// the dispatcher and every other topic on it go on.
	onPanic func(v any)
}

func newLiveShards(n, capacity int, onPanic func(v any)) *liveShards {
	ls := &liveShards{chans: make([]chan *nats.Msg, n), done: make(chan struct{}), onPanic: onPanic}
	for i := range ls.chans {
		ch := make(chan *nats.Msg, capacity)
		ls.chans[i] = ch
		go ls.dispatch(ch)
	}
	return ls
}

func (ls *liveShards) dispatch(ch chan *nats.Msg) {
	for {
		select {
		case m := <-ch:
			if h, ok := ls.handlers.Load(m.Sub); ok {
				ls.handle(h.(func(*nats.Msg)), m)
			} // else: unsubscribed while the message was queued
		case <-ls.done:
			return
		}
	}
}

func (ls *liveShards) handle(h func(*nats.Msg), m *nats.Msg) {
	defer func() {
		if v := recover(); v != nil && ls.onPanic != nil {
			ls.onPanic(v)
		}
	}()
	h(m)
}

func (ls *liveShards) shard(subject string) chan *nats.Msg {
	h := fnv.New32a()
	h.Write([]byte(subject))
	return ls.chans[h.Sum32()%uint32(len(ls.chans))]
}

// subscribe subscribes handle to subject on one of the shards; the
// returned func unsubscribes.
func (ls *liveShards) subscribe(nc *nats.Conn, subject string, handle func(*nats.Msg)) (func(), error) {
	sub, err := nc.ChanSubscribe(subject, ls.shard(subject))
	if err != nil {
		return nil, err
	}
	ls.handlers.Store(sub, handle)
	return func() {
		_ = sub.Unsubscribe()
		ls.handlers.Delete(sub)
	}, nil
}

// stop ends the dispatchers (nats.go never blocks on a full shard, so
// messages arriving later are dropped).
func (ls *liveShards) stop() { close(ls.done) }

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
	return Delivery{Seq: seq, LastSeq: last, Frame: encodeStored(seq, ts, m.Data, m.Header, t)}, nil
}

// encodeStored is the push frame of a stored message, however it was read
// (live, Direct Get, an ordered consumer): the same bytes for the same
// message on every path.
func encodeStored(seq uint64, ts int64, data []byte, h nats.Header, t target) []byte {
	env := protocol.DecodeEnvelope(data)
	msgID := env.MsgID
	if msgID == "" {
		msgID = h.Get(jetstream.MsgIDHeader)
	}
	return protocol.AppendMsg(make([]byte, 0, len(data)+96+len(t.room)), &protocol.Msg{
		Op: protocol.OpMsg, Room: t.room, To: t.to, Seq: seq, MsgID: msgID, From: env.From, TS: ts, Data: env.Data,
	})
}
