package edge

import (
	"context"
	"errors"
)

// streamReader builds the edge's reads of one topic's stored messages
// (ranges, counts, the newest n, the first) from the backend's batched
// Fetch, so that their logic is the same on every backend: on NATS one
// batch is one Direct Get (nats-server 2.11+): no consumer is created, any
// replica may answer, and one request returns up to a batch of one
// subject's messages in order.
type streamReader struct {
	b Backend
}

// batchLimit bounds one batch.
const batchLimit = 256

// fetch returns up to batch stored messages of topic with sequence >= from,
// in order, and how many more match after the last one.
func (r *streamReader) fetch(ctx context.Context, topic string, from uint64, batch int) ([]Delivery, uint64, error) {
	return r.b.Fetch(ctx, topic, max(from, 1), min(batch, batchLimit))
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
	return r.b.LastSeq(ctx, topic)
}
