package edge

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// A room notices a lost RePublish when its next message names a previous
// sequence it never saw (Nats-Last-Sequence). A room that stays quiet after
// the loss never does: its subscribers would wait for a stored, acknowledged
// message until someone spoke again. RePublish is at most once and done by
// the stream's leader, so losses cluster around a leader change, a NATS
// reconnect of the edge, and routes between NATS servers going down and up
// (which the edge's own connection does not see). The resyncer makes every
// topic catch up with the stream (one Direct Get of its last sequence, a
// repair when it is ahead):
//
//   - when the chat stream elects a leader (its advisory), and again a
//     moment later, when interest has settled on the new leader's server;
//   - after a reconnect of the edge's NATS connection, likewise twice;
//   - every interval, for losses nothing announces (a route partition).
//
// Passes never overlap: triggers that arrive during a pass coalesce into
// one more pass after it.
type resyncer struct {
	pass     func(ctx context.Context)
	interval time.Duration
	settle   time.Duration // the delay of the second pass after an event
	log      *slog.Logger
	kick     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	// settleTimer triggers the second pass after an event.
	settleTimer *time.Timer
}

func newResyncer(pass func(context.Context), interval, settle time.Duration, log *slog.Logger) *resyncer {
	r := &resyncer{pass: pass, interval: interval, settle: settle, log: log,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	r.settleTimer = time.AfterFunc(time.Hour, r.trigger)
	r.settleTimer.Stop()
	return r
}

// event asks for a pass now and another after the settle delay (a later
// event moves that second pass later: it follows the last event).
func (r *resyncer) event(why string) {
	r.log.Debug("resync", "why", why)
	r.trigger()
	r.settleTimer.Reset(r.settle)
}

func (r *resyncer) trigger() {
	select {
	case r.kick <- struct{}{}:
	default: // a pass is already due
	}
}

func (r *resyncer) run() {
	defer close(r.done)
	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
		case <-r.kick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		go func() { // a stop ends the pass early
			select {
			case <-r.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		r.pass(ctx)
		cancel()
	}
}

func (r *resyncer) close() {
	r.settleTimer.Stop()
	close(r.stop)
	<-r.done
}

// watchLeader calls r.event whenever the chat stream elects a leader.
func (r *resyncer) watchLeader(nc *nats.Conn) (*nats.Subscription, error) {
	return nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED."+pjs.ChatStream, func(*nats.Msg) {
		r.event("stream leader elected")
	})
}
