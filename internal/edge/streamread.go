package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	pjs "github.com/parley-mesh/parley/jetstream"
	"github.com/parley-mesh/parley/protocol"
)

// streamReader reads a topic's stored messages with batched Direct Get
// (nats-server 2.11+): no consumer is created, any replica may answer, and
// one request returns up to a batch of one subject's messages in order.
type streamReader struct {
	nc      *nats.Conn
	stream  string
	timeout time.Duration
}

// batchLimit bounds one Direct Get batch.
const batchLimit = 256

// errNoMessages is a 404 from Direct Get: nothing matches.
var errNoMessages = errors.New("no messages")

// fetch returns up to batch stored messages of topic with sequence >= from,
// in order, as deliveries, and how many more match after the last one.
func (r *streamReader) fetch(ctx context.Context, topic string, from uint64, batch int) ([]Delivery, uint64, error) {
	if batch > batchLimit {
		batch = batchLimit
	}
	if from == 0 {
		from = 1
	}
	req, _ := json.Marshal(struct {
		Seq     uint64 `json:"seq"`
		NextFor string `json:"next_by_subj"`
		Batch   int    `json:"batch"`
	}{from, topic, batch})
	inbox := r.nc.NewRespInbox()
	sub, err := r.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read %s: %w", protocol.ErrUnavailable, topic, err)
	}
	defer sub.Unsubscribe()
	if err := r.nc.PublishRequest("$JS.API.DIRECT.GET."+r.stream, inbox, req); err != nil {
		return nil, 0, fmt.Errorf("%w: read %s: %w", protocol.ErrUnavailable, topic, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	tgt := pushTarget(topic)
	var out []Delivery
	var pending uint64
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: read %s: %w", protocol.ErrUnavailable, topic, err)
		}
		switch m.Header.Get("Status") {
		case "":
		case "204": // end of batch
			return out, pending, nil
		case "404":
			if len(out) > 0 {
				return out, 0, nil
			}
			return nil, 0, errNoMessages
		default:
			return nil, 0, fmt.Errorf("%w: read %s: status %s %s", protocol.ErrUnavailable, topic, m.Header.Get("Status"), m.Header.Get("Description"))
		}
		d, err := decodeStored(m, tgt)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: read %s: %w", protocol.ErrInternal, topic, err)
		}
		pending, _ = strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
		out = append(out, d)
	}
}

// decodeStored is decodeLive for a Direct Get response: the same headers
// (Nats-Sequence, Nats-Time-Stamp) but Nats-Last-Sequence means something
// else there, so it is not kept.
func decodeStored(m *nats.Msg, t target) (Delivery, error) {
	d, err := decodeLive(m, t)
	d.LastSeq = 0
	return d, err
}

// readRange returns the topic's messages with from <= seq <= upTo, at most
// max of them (the first ones), and whether there were more than max.
func (r *streamReader) readRange(ctx context.Context, topic string, from, upTo uint64, max int) ([]Delivery, bool, error) {
	var out []Delivery
	for from <= upTo {
		want := max - len(out) + 1 // one more tells "there were more"
		ds, pending, err := r.fetch(ctx, topic, from, want)
		if errors.Is(err, errNoMessages) {
			break
		}
		if err != nil {
			return nil, false, err
		}
		for _, d := range ds {
			if d.Seq > upTo {
				return out, false, nil
			}
			if len(out) == max {
				return out, true, nil
			}
			out = append(out, d)
		}
		// A batch may end short of want (batchLimit, or the server's byte
		// limit per batch): only the count of matching messages after the
		// last one says whether the topic has more.
		if len(ds) == 0 || pending == 0 {
			break
		}
		from = ds[len(ds)-1].Seq + 1
	}
	return out, false, nil
}

// countFrom is the number of topic's stored messages with seq >= from.
func (r *streamReader) countFrom(ctx context.Context, topic string, from uint64) (uint64, error) {
	ds, pending, err := r.fetch(ctx, topic, from, 1)
	if errors.Is(err, errNoMessages) || (err == nil && len(ds) == 0) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return pending + 1, nil
}

// latest returns the newest n messages of topic with seq < before (0: no
// bound), oldest first. Direct Get reads only forwards, but its batch
// replies say how many messages match from a sequence on, so counts locate
// where the newest n begin without reading anything older: windows grow
// backwards from before until they hold n messages, then, if the window holds
// far more, a binary search narrows the start.
func (r *streamReader) latest(ctx context.Context, topic string, before uint64, n int, streamFirst uint64) ([]Delivery, error) {
	if n <= 0 {
		return nil, nil
	}
	if before == 0 {
		last, err := r.lastSeq(ctx, topic)
		if err != nil || last == 0 {
			return nil, err
		}
		before = last + 1
	}
	if streamFirst == 0 {
		streamFirst = 1
	}
	if before <= streamFirst {
		return nil, nil
	}
	after, err := r.countFrom(ctx, topic, before)
	if err != nil {
		return nil, err
	}
	count := func(s uint64) (uint64, error) {
		c, err := r.countFrom(ctx, topic, s)
		if c < after {
			return 0, err
		}
		return c - after, err
	}
	want := uint64(n)
	hi := before // the previous window's start: fewer than n messages from there
	window := 2 * want
	var start, c uint64
	for {
		start = streamFirst
		if before-streamFirst > window {
			start = before - window
		}
		if c, err = count(start); err != nil {
			return nil, err
		}
		if c >= want || start == streamFirst {
			break
		}
		hi = start
		window *= 4
	}
	if c > 4*want && c > batchLimit {
		// Largest s in [start, hi) with count(s) >= n.
		lo := start
		for lo+1 < hi {
			mid := lo + (hi-lo)/2
			cm, err := count(mid)
			if err != nil {
				return nil, err
			}
			if cm >= want {
				lo, c = mid, cm
			} else {
				hi = mid
			}
		}
		start = lo
	}
	out, _, err := r.readRange(ctx, topic, start, before-1, int(c))
	if err != nil {
		return nil, err
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out, nil
}

// first is the sequence of the topic's oldest stored message (0: none).
func (r *streamReader) first(ctx context.Context, topic string) (uint64, error) {
	ds, _, err := r.fetch(ctx, topic, 1, 1)
	if errors.Is(err, errNoMessages) {
		return 0, nil
	}
	if err != nil || len(ds) == 0 {
		return 0, err
	}
	return ds[0].Seq, nil
}

// lastSeq is the sequence of the topic's newest stored message (0: none).
func (r *streamReader) lastSeq(ctx context.Context, topic string) (uint64, error) {
	req, _ := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{topic})
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	m, err := r.nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+r.stream, req)
	if err != nil {
		return 0, fmt.Errorf("%w: read last sequence of %s: %w", protocol.ErrUnavailable, topic, err)
	}
	switch m.Header.Get("Status") {
	case "":
	case "404":
		return 0, nil
	default:
		return 0, fmt.Errorf("%w: read last sequence of %s: status %s", protocol.ErrUnavailable, topic, m.Header.Get("Status"))
	}
	seq, err := strconv.ParseUint(m.Header.Get(pjs.HeaderSequence), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: last message of %s has no sequence", protocol.ErrInternal, topic)
	}
	return seq, nil
}
