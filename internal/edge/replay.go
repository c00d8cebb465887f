package edge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/parley-mesh/parley/protocol"
)

// Long resumes. A sub with since that missed more than --max-recover
// messages, or more bytes than half the connection's queue, is not cut to
// the newest: every message the stream still holds is replayed, in order,
// from a goroutine of its own, through an ephemeral ordered consumer:
//
//   - Paced: before each message the replay waits until the connection's
//     queue is at most half full (outbox.waitRoom), so it goes as fast as
//     the client reads and never overflows the queue; the consumer is a
//     pull consumer, so what the edge buffers from it is one pull batch.
//     Nothing else waits on it: the room's fan-out holds the member's live
//     messages in pending meanwhile, the shared dispatchers never block.
//   - Seamless: the member stays syncing until the replay has passed the
//     position the sub replied with; then handover sends what pending
//     holds after the replay's last message, and turns the member live in
//     the room's critical section. If the replay lasted so long that
//     pending overflowed (its older half is dropped, see member.hold), the
//     replay first reads on from the stream past what was dropped. So
//     nothing is lost or repeated, and pending stays bounded.
//   - Bounded: at most --max-replays run on one edge; a sub beyond that
//     waits for a slot (within the sub's deadline) or gets unavailable.
//   - Cleaned up: the replay ends with the connection (its context is the
//     connection's) or an unsub of the room (which waits for it), and it
//     deletes its consumer on the way out; the consumer also has an
//     inactivity threshold, for an edge that dies mid-replay.
//
// Small gaps keep the batched Direct Get path (streamread.go): one
// consumer per resume would cost the servers a consumer creation (a meta
// proposal in a cluster) for every reconnecting client.

// resumePlan is what a sub with since or last replays: msgs, read before
// the reply, oldest first; complete says they are every message up to the
// sub's position (else the stream is read on after the last of them). A
// long plan is replayed paced, from its own goroutine; a short one is sent
// with the reply.
type resumePlan struct {
	msgs     []Delivery
	complete bool
	long     bool
}

// Tuning of the consumer a long resume reads through.
const (
	// replayPull is the pull batch: what the edge buffers from the
	// consumer per replay (nats.go asks for more at half of it).
	replayPull = 512
	// replayIdle: no message for this long while some are owed means
	// checking whether the stream still holds them.
	replayIdle = 2 * time.Second
	// replayResets bounds the ordered consumer's re-creations in one go
	// (a NATS reconnect, a missed heartbeat): beyond, the replay fails.
	replayResets = 5
	// replayReopenAfter is how many idle waits in a row, while the stream
	// still holds messages owed, make the replay start a new cursor.
	replayReopenAfter = 2
)

// errReplayGone: the stream no longer holds messages the replay owes.
var errReplayGone = errors.New("the stream no longer holds messages being replayed (retention)")

// acquireReplay takes a replay slot, waiting while --max-replays run, for
// as long as ctx allows (the sub's deadline) and the connection lives.
func (c *Conn) acquireReplay(ctx context.Context) error {
	select {
	case c.e.replaySlots <- struct{}{}:
		c.e.metrics.ReplaysActive.Inc()
		return nil
	default:
	}
	select {
	case c.e.replaySlots <- struct{}{}:
		c.e.metrics.ReplaysActive.Inc()
		return nil
	case <-ctx.Done():
	case <-c.closing:
	}
	c.e.metrics.Replays.WithLabelValues("refused").Inc()
	return fmt.Errorf("%w: %d long resumes are already replaying on this edge (--max-replays); retry, or connect to another edge", protocol.ErrUnavailable, c.e.cfg.MaxReplays)
}

// releaseReplay gives back acquireReplay's slot (the gauge first, so that
// it never shows more than --max-replays).
func (e *Edge) releaseReplay() {
	e.metrics.ReplaysActive.Dec()
	<-e.replaySlots
}

// replay is a long resume in progress on a connection.
type replay struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the replay goroutine has ended
}

// stop ends the replay and waits until its goroutine (and its consumer)
// is gone.
func (rp *replay) stop() {
	rp.cancel()
	<-rp.done
}

// startReplay replays plan to c from its own goroutine, holding the slot
// acquireReplay took, after the reply (already queued): messages of r after
// since up to upTo, then the live feed. The member stays syncing until then.
func (c *Conn) startReplay(r *room, room string, since, upTo uint64, plan *resumePlan) {
	ctx, cancel := c.workCtx(0)
	rp := &replay{cancel: cancel, done: make(chan struct{})}
	if c.replays == nil {
		c.replays = make(map[string]*replay)
	}
	c.replays[room] = rp
	m := c.e.metrics
	go func() {
		defer close(rp.done)
		defer c.e.releaseReplay()
		defer cancel()
		defer c.contain("replay")
		began := time.Now()
		result, n, err := c.runReplay(ctx, r, since, upTo, plan)
		m.Replays.WithLabelValues(result).Inc()
		switch result {
		case "failed":
			c.logger().Warn("long resume failed; closing the connection so that the client resumes", "room", room, "since", since, "replayed", n, "err", err)
			c.close(protocol.CloseTryAgainLater, "resume interrupted: reconnect and resume with since")
		default:
			c.debug("long resume ended", "room", room, "since", since, "replayed", n, "result", result, "seconds", time.Since(began).Seconds())
		}
	}()
}

// runReplay is the replay goroutine's work (see the top of the file); it
// returns how it ended, the messages it replayed and, when it failed, why.
func (c *Conn) runReplay(ctx context.Context, r *room, since, upTo uint64, plan *resumePlan) (result string, n int, err error) {
	cfg := &c.e.cfg
	m := c.e.metrics
	var counted, fromConsumer int
	flush := func() {
		m.Replayed.Add(float64(n - counted))
		m.ReplayedFromConsumer.Add(float64(fromConsumer))
		counted, fromConsumer = n, 0
	}
	defer flush()
	send := func(d Delivery) error {
		if err := c.out.waitRoom(ctx, len(d.Frame)); err != nil {
			return err
		}
		c.deliver(d.Frame)
		if n++; n-counted >= replayPull {
			flush()
		}
		return nil
	}
	through := since
	for i, d := range plan.msgs {
		if err := send(d); err != nil {
			return "cancelled", n, nil
		}
		through = d.Seq
		plan.msgs[i] = Delivery{} // sent: the frame need not stay
	}
	if plan.complete {
		through = max(through, upTo)
	}
	cur := &streamCursor{b: c.e.backend, reader: c.e.reader, topic: r.topic,
		inactive: max(30*time.Second, 3*cfg.WriteTimeout)}
	defer cur.close()
	need := upTo // the stream must be read at least this far
	for {
		if through >= need {
			st, t := r.handover(c, through, cfg.MaxQueuedMsgs/4, cfg.MaxQueuedBytes/4)
			switch st {
			case handoverDone:
				return "completed", n, nil
			case handoverGone:
				return "cancelled", n, nil
			case handoverMore: // pending's next batch went out: wait for room
				through = t
				if err := c.out.waitRoom(ctx, 0); err != nil {
					return "cancelled", n, nil
				}
				continue
			case handoverBehind: // pending dropped messages: the stream has them
				need = t
			}
		}
		d, err := cur.next(ctx, through)
		if err != nil {
			if ctx.Err() != nil {
				return "cancelled", n, nil
			}
			return "failed", n, err
		}
		if err := send(d); err != nil {
			return "cancelled", n, nil
		}
		fromConsumer++
		through = d.Seq
	}
}

// streamCursor reads one topic's stored messages forwards through a backend
// cursor (on NATS an ephemeral ordered consumer), opened when first needed
// and again whenever the reader asks for another position than where it
// stands (after the replay moved ahead on pending, which is rare: a client
// slower than the room's live rate).
type streamCursor struct {
	b        Backend
	reader   *streamReader
	topic    string
	inactive time.Duration // the backend may drop the cursor after this idle

	cur Cursor
	pos uint64 // the last sequence read
	// reopened counts cursors started again because one went silent.
	reopened int
}

// next returns the topic's first stored message after seq after.
func (s *streamCursor) next(ctx context.Context, after uint64) (Delivery, error) {
	if s.cur == nil || s.pos != after {
		s.close()
		cur, err := s.b.OpenCursor(ctx, s.topic, after, s.inactive)
		if err != nil {
			return Delivery{}, err
		}
		s.cur, s.pos = cur, after
	}
	idle := 0
	for {
		d, err := s.cur.Next(replayIdle)
		if errors.Is(err, errCursorIdle) {
			if ctx.Err() != nil {
				return Delivery{}, ctx.Err()
			}
			// Messages are owed (the sub's position, or what pending
			// dropped, lies beyond after) yet none came: unless the
			// stream still holds some after after, retention took them.
			left, cerr := s.reader.countFrom(ctx, s.topic, after+1)
			if cerr == nil && left == 0 {
				return Delivery{}, errReplayGone
			}
			// The stream has them and the cursor says nothing: on NATS an
			// ordered consumer whose pull is no longer at the server (seen
			// on the R3 cluster: every owed message pending, no waiting
			// pull, for as long as one waited). Start a new cursor there.
			if idle++; idle >= replayReopenAfter {
				s.close()
				cur, err := s.b.OpenCursor(ctx, s.topic, after, s.inactive)
				if err != nil {
					return Delivery{}, err
				}
				s.cur, s.pos, idle = cur, after, 0
				s.reopened++
			}
			continue
		}
		if err != nil {
			return Delivery{}, err
		}
		if d.Seq <= after { // an ordered consumer never goes back; be sure
			continue
		}
		s.pos = d.Seq
		return d, nil
	}
}

// close ends the cursor (on NATS: deletes the consumer, so that a client
// that leaves mid-replay leaves none behind).
func (s *streamCursor) close() {
	if s.cur != nil {
		s.cur.Close()
		s.cur = nil
	}
}
