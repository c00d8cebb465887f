// Package loadgen drives Parley edges the way real-time servers are compared:
// many WebSocket connections from several worker processes, scenarios of
// idle, fan-out, chat-like and publish load, end-to-end latency percentiles,
// losses and duplicates by seq, and the servers' memory and CPU from /proc.
//
// It speaks only the documented protocol, through the client package, so it
// can be pointed at any edge.
package loadgen

import (
	"fmt"
	"time"
)

// Scenarios.
const (
	Idle      = "idle"      // connections held (each subscribed to a room), memory per connection
	Fanout    = "fanout"    // subscribers in rooms, a backend (or publishers) publishing at a fixed rate
	PubSub    = "pubsub"    // every client subscribes to its room and publishes at a rate, with acks
	Publish   = "publish"   // acked publishes through the edge as fast as allowed
	Reconnect = "reconnect" // everyone subscribed, mass drop mid-run, resume with since
	// NATSPublish is the ceiling for Publish: a plain nats.go async
	// JetStream publisher on the same NATS, Conns × Window publishes in
	// flight, no edge and no workers.
	NATSPublish = "nats-publish"
)

// Spec is one run.
type Spec struct {
	Scenario string        `json:"scenario"`
	URLs     []string      `json:"urls"`     // edge WebSocket URLs, connections spread round-robin
	NATS     string        `json:"nats"`     // NATS URL for the backend publisher (fanout, reconnect)
	Conns    int           `json:"conns"`    // total connections
	Workers  int           `json:"workers"`  // worker processes
	Rate     float64       `json:"rate"`     // connections opened per second, all workers together
	Rooms    int           `json:"rooms"`    // connection i is in room i % Rooms
	MsgRate  float64       `json:"msg_rate"` // fanout/reconnect: backend msg/s per room; pubsub: per client
	Payload  int           `json:"payload"`  // padding bytes per message
	Duration time.Duration `json:"duration"` // measured phase
	Sources  int           `json:"sources"`  // source addresses 127.0.0.2 … (ephemeral ports are per address)
	Window   int           `json:"window"`   // publish: publishes in flight per connection
	Ramp     time.Duration `json:"ramp"`     // connect phase bound
	Prefix   string        `json:"prefix"`   // room and user name prefix (distinct per run)
	Token    string        `json:"token"`    // JWT for every connection; empty: ?user= (insecure edges)
	Procs    []string      `json:"procs"`    // process names sampled from /proc (comm)
	Progress time.Duration `json:"progress"` // progress line period
	// Backlog (reconnect): messages each worker stores in each of its rooms
	// while its connections are away, before they resume: a long resume of
	// that many messages per connection.
	Backlog int `json:"backlog"`
}

func (s *Spec) check() error {
	switch s.Scenario {
	case Idle, Fanout, PubSub, Publish, Reconnect, NATSPublish:
	default:
		return fmt.Errorf("unknown scenario %q", s.Scenario)
	}
	if len(s.URLs) == 0 {
		return fmt.Errorf("no edge URL")
	}
	if s.Conns <= 0 || s.Workers <= 0 || s.Rooms <= 0 || s.Rate <= 0 || s.Duration <= 0 {
		return fmt.Errorf("conns, workers, rooms, rate and duration must be positive")
	}
	if s.Backlog < 0 || (s.Backlog > 0 && s.Scenario != Reconnect) {
		return fmt.Errorf("backlog is for the reconnect scenario, and not negative")
	}
	if (s.Scenario == Fanout || s.Scenario == Reconnect || s.Scenario == NATSPublish) && s.NATS == "" {
		return fmt.Errorf("%s needs --nats for the backend publisher", s.Scenario)
	}
	if s.Sources <= 0 || s.Sources > 250 {
		return fmt.Errorf("sources must be 1..250")
	}
	return nil
}

// workerSpec is what the coordinator hands one worker process.
type workerSpec struct {
	Spec
	Index     int `json:"index"`
	FirstConn int `json:"first_conn"`
	NConns    int `json:"n_conns"`
}

// report is one line a worker writes to the coordinator.
type report struct {
	Type    string         `json:"type"` // ready, progress, final, error
	Worker  int            `json:"worker"`
	Counts  Counts         `json:"counts"`
	Hist    []byte         `json:"hist,omitempty"`     // final: encoded latency histogram
	PubHist []byte         `json:"pub_hist,omitempty"` // final: publish ack latency histogram
	Rooms   []roomReport   `json:"rooms,omitempty"`    // final
	Errors  map[string]int `json:"errors,omitempty"`   // connect errors by cause
	Resume  []byte         `json:"resume,omitempty"`   // reconnect: resume latency histogram
	CatchUp []byte         `json:"catch_up,omitempty"` // reconnect with backlog: time to have the whole backlog
	Message string         `json:"message,omitempty"`
}

// Counts are monotonically increasing counters of one worker.
type Counts struct {
	Connected    int    `json:"connected"`
	Subscribed   int    `json:"subscribed"`
	Delivered    uint64 `json:"delivered"`
	Published    uint64 `json:"published"`
	Acked        uint64 `json:"acked"`
	PubErrors    uint64 `json:"pub_errors"`
	Dups         uint64 `json:"dups"`
	Disorder     uint64 `json:"disorder"`
	Dropped      int    `json:"dropped"` // connections lost during the run
	Resumed      int    `json:"resumed"`
	NotRecovered int    `json:"not_recovered"`
}

func (c *Counts) add(o Counts) {
	c.Connected += o.Connected
	c.Subscribed += o.Subscribed
	c.Delivered += o.Delivered
	c.Published += o.Published
	c.Acked += o.Acked
	c.PubErrors += o.PubErrors
	c.Dups += o.Dups
	c.Disorder += o.Disorder
	c.Dropped += o.Dropped
	c.Resumed += o.Resumed
	c.NotRecovered += o.NotRecovered
}

// roomReport lets the coordinator count losses: every subscriber of a room
// that subscribed at seq Start should have received every acked seq of the
// room above Start.
type roomReport struct {
	Room  string   `json:"room"`
	Subs  []subEnd `json:"subs,omitempty"`
	Acked []uint64 `json:"acked,omitempty"` // seqs this worker's publishers got acked
}

type subEnd struct {
	Start    uint64 `json:"start"`
	Received uint64 `json:"received"`
	Last     uint64 `json:"last"`
}
