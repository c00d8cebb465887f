//go:build unix

package chaostest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// FaultKind is one kind of fault a trial injects.
type FaultKind string

// The faults. Each trial injects one, at a random moment while publishers
// and subscribers are busy, and undoes it (restart, resume) within the trial.
const (
	// EdgeKill SIGKILLs an edge (its clients see the TCP connection reset
	// without a close frame) and starts it again on the same port.
	EdgeKill FaultKind = "edge-kill"
	// EdgeTerm SIGTERMs an edge: the drain (listener closed, in-flight
	// publishes acked, clients closed with 4003), then a restart.
	EdgeTerm FaultKind = "edge-term"
	// NATSKill SIGKILLs a NATS node, half of the time the chat stream's
	// leader, and restarts it on the same ports and store.
	NATSKill FaultKind = "nats-kill"
	// LeaderStepDown asks the chat stream's leader to step down
	// ($JS.API.STREAM.LEADER.STEPDOWN.PARLEY_CHAT).
	LeaderStepDown FaultKind = "leader-stepdown"
	// NATSPartition cuts one NATS node off, half of the time the stream
	// leader. It is a stand-in for a network partition: the process is
	// SIGSTOPped, so its peers and clients hear nothing from it (TCP
	// stays up, no RST) until it is SIGCONTed seconds later and finds
	// the cluster moved on.
	NATSPartition FaultKind = "nats-partition"
	// EdgeNATSKick makes the server an edge is connected to close the
	// edge's NATS connection ($SYS.REQ.SERVER.<id>.KICK): the edge's
	// nats.go reconnects (maybe to another node) and must repair what its
	// live subscriptions missed meanwhile.
	EdgeNATSKick FaultKind = "edge-nats-kick"
)

// AllFaults returns every fault kind, in a fixed order.
func AllFaults() []FaultKind {
	return []FaultKind{EdgeKill, EdgeTerm, NATSKill, LeaderStepDown, NATSPartition, EdgeNATSKick}
}

// ParseFault checks a fault kind's name.
func ParseFault(s string) (FaultKind, error) {
	for _, k := range AllFaults() {
		if string(k) == s {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown fault %q (known: %v)", s, AllFaults())
}

// between is a random duration in [lo, hi).
func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// inject applies the fault and undoes it, returning what it did. It runs
// while the trial's clients run; an error means the fault could not be
// applied as intended (the trial then says so and proves less).
func (m *Mesh) inject(ctx context.Context, kind FaultKind, rng *rand.Rand) (string, error) {
	switch kind {
	case EdgeKill, EdgeTerm:
		e := m.edges[rng.IntN(len(m.edges))]
		down := between(rng, 300*time.Millisecond, 1500*time.Millisecond)
		sig := sigKill
		if kind == EdgeTerm {
			sig = sigTerm
		}
		began := time.Now()
		if err := e.signal(sig); err != nil {
			return e.id, err
		}
		// A drain takes at most --drain-timeout (5 s); a kill is instant.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := e.wait(wctx)
		cancel()
		if err != nil {
			e.kill()
			return e.id, fmt.Errorf("%s did not exit after %v: %w", e.id, sig, err)
		}
		exit := time.Since(began)
		if err := sleep(ctx, down); err != nil {
			return e.id, err
		}
		if err := m.startEdge(ctx, e); err != nil {
			return e.id, err
		}
		return fmt.Sprintf("%s, exited after %v, down %v", e.id, exit.Round(time.Millisecond), down.Round(time.Millisecond)), nil

	case NATSKill, NATSPartition:
		n, role := m.pickNode(ctx, rng)
		if kind == NATSKill {
			down := between(rng, 500*time.Millisecond, 3*time.Second)
			n.kill()
			if err := sleep(ctx, down); err != nil {
				return n.name, err
			}
			if err := n.start(); err != nil {
				return n.name, err
			}
			return fmt.Sprintf("%s (%s) SIGKILLed, restarted after %v", n.name, role, down.Round(time.Millisecond)), nil
		}
		// Long enough, at times, for the others to elect a new stream
		// leader (raft election timeouts are a few seconds).
		down := between(rng, 2*time.Second, 7*time.Second)
		if err := n.signal(sigStop); err != nil {
			return n.name, err
		}
		err := sleep(ctx, down)
		if cerr := n.signal(sigCont); cerr != nil {
			return n.name, cerr
		}
		if err != nil {
			return n.name, err
		}
		after := m.leader(ctx)
		return fmt.Sprintf("%s (%s) SIGSTOPped for %v, leader after: %s", n.name, role, down.Round(time.Millisecond), after), nil

	case LeaderStepDown:
		before := m.leader(ctx)
		if err := m.stepDown(ctx); err != nil {
			return before, err
		}
		var after string
		_ = retry(ctx, 10*time.Second, func(ctx context.Context) error {
			if after = m.leader(ctx); after == "" || after == before {
				return fmt.Errorf("no new leader yet")
			}
			return nil
		})
		return fmt.Sprintf("leader %s -> %s", before, after), nil

	case EdgeNATSKick:
		e := m.edges[rng.IntN(len(m.edges))]
		var sc serverConn
		if err := retry(ctx, 5*time.Second, func(ctx context.Context) error {
			var err error
			sc, err = m.findConn(ctx, e.id)
			return err
		}); err != nil {
			return e.id, err
		}
		if err := m.kick(ctx, sc); err != nil {
			return e.id, err
		}
		return fmt.Sprintf("%s kicked off %s (cid %d)", e.id, sc.serverName, sc.cid), nil
	}
	return "", fmt.Errorf("unknown fault %q", kind)
}

// pickNode chooses the node a NATS fault hits: the chat stream's leader
// half of the time (the interesting case for publishes and RePublish),
// else any node.
func (m *Mesh) pickNode(ctx context.Context, rng *rand.Rand) (*natsNode, string) {
	leader := m.leader(ctx)
	if rng.IntN(2) == 0 {
		if n := m.node(leader); n != nil {
			return n, "stream leader"
		}
	}
	n := m.nodes[rng.IntN(len(m.nodes))]
	if n.name == leader {
		return n, "stream leader"
	}
	return n, "follower"
}

// sleep waits d unless ctx ends first. Faults use it for their random
// timing, never to wait for something to happen.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
