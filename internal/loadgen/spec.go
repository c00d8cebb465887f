// Package loadgen drives Parley edges the way real-time servers are compared:
// many WebSocket connections from several worker processes, scenarios of
// idle, fan-out, saturation, chat-like and publish load, end-to-end latency
// percentiles, losses and duplicates, connect rate, and the servers' memory
// (per connection) and CPU from /proc.
//
// Three targets can be measured beside each other (Spec.Target): Parley
// itself, Centrifugo (its client protocol v2 in JSON, publishing through its
// HTTP API) and nats-server's own WebSocket listener (publishing with
// nats.go). For the idle, fanout and saturate scenarios every target is
// driven by the same client code (target.go: raw gorilla/websocket, one
// reader goroutine per connection, the same buffers), and every published
// message carries its room's sequence number, its step and its send time,
// so loss, duplicates, order and latency are counted the same way for all
// three. The chat-like, publish and reconnect scenarios measure Parley
// only, through its client package (they need its acked publishes and
// resumes).
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
	// Saturate ramps the offered publish rate in steps until the p99 goes
	// over P99Limit or a message is lost: the highest rate a target holds.
	Saturate = "saturate"
	// NATSPublish is the ceiling for Publish: a plain nats.go async
	// JetStream publisher on the same NATS, Conns × Window publishes in
	// flight, no edge and no workers.
	NATSPublish = "nats-publish"
)

// Targets: what is measured.
const (
	TargetParley     = "parley"     // Parley edges (/ws), a backend publishing to JetStream
	TargetCentrifugo = "centrifugo" // Centrifugo (/connection/websocket), publishing through its HTTP API
	TargetNATS       = "nats"       // nats-server's WebSocket listener, publishing with nats.go
)

// Spec is one run.
type Spec struct {
	Scenario string   `json:"scenario"`
	Target   string   `json:"target"`  // TargetParley (default), TargetCentrifugo, TargetNATS
	URLs     []string `json:"urls"`    // WebSocket URLs, connections spread round-robin
	NATS     string   `json:"nats"`    // NATS URL for the backend publisher (fanout, reconnect, saturate: parley and nats)
	Conns    int      `json:"conns"`   // total connections
	Workers  int      `json:"workers"` // worker processes
	// Rate is connections opened per second, all workers together; 0:
	// unpaced, as fast as the server takes them with DialConcurrency
	// handshakes in flight.
	Rate float64 `json:"rate"`
	// DialConcurrency bounds the handshakes in flight, all workers
	// together; 0: 64 when unpaced, 256 per worker when paced.
	DialConcurrency int           `json:"dial_concurrency"`
	Rooms           int           `json:"rooms"`    // connection i is in room i % Rooms
	MsgRate         float64       `json:"msg_rate"` // fanout/reconnect: backend msg/s per room; pubsub: per client
	Payload         int           `json:"payload"`  // padding bytes per message
	Duration        time.Duration `json:"duration"` // measured phase
	Sources         int           `json:"sources"`  // source addresses 127.0.0.2 … (ephemeral ports are per address)
	Window          int           `json:"window"`   // publish: publishes in flight per connection
	Ramp            time.Duration `json:"ramp"`     // connect phase bound
	Prefix          string        `json:"prefix"`   // room and user name prefix (distinct per run)
	Token           string        `json:"token"`    // JWT for every connection; empty: ?user= (insecure edges)
	// JWTSecret mints a token per user instead (HS256, sub = the user,
	// Parley grants of every room): Centrifugo's token_hmac_secret_key, or
	// a Parley edge's HMAC secret.
	JWTSecret string `json:"jwt_secret"`
	// Centrifugo's HTTP API (the backend publisher of the centrifugo
	// target): http://host:port, and its API key (X-API-Key).
	CentrifugoAPI    string `json:"centrifugo_api"`
	CentrifugoAPIKey string `json:"centrifugo_api_key"`
	// Saturate: the offered publish rate (msg/s, all rooms together)
	// starts at StartRate and grows by StepFactor (or by StepAdd msg/s when
	// StepAdd > 0) each step of StepDuration, at most MaxSteps steps; a
	// step holds when, Grace after its publishing ended, every message was
	// delivered once and in order with p99 ≤ P99Limit.
	StartRate    float64       `json:"start_rate"`
	StepFactor   float64       `json:"step_factor"`
	StepAdd      float64       `json:"step_add"`
	StepDuration time.Duration `json:"step_duration"`
	MaxSteps     int           `json:"max_steps"`
	P99Limit     time.Duration `json:"p99_limit"`
	Grace        time.Duration `json:"grace"`
	Procs        []string      `json:"procs"`    // process names sampled from /proc (comm)
	Progress     time.Duration `json:"progress"` // progress line period
	// Backlog (reconnect): messages each worker stores in each of its rooms
	// while its connections are away, before they resume: a long resume of
	// that many messages per connection.
	Backlog int `json:"backlog"`
}

// driven says the run goes through the targets' drivers (target.go), the
// same client code for every target, rather than Parley's client package.
func (s *Spec) driven() bool {
	return s.Scenario == Idle || s.Scenario == Fanout || s.Scenario == Saturate
}

func (s *Spec) check() error {
	switch s.Scenario {
	case Idle, Fanout, PubSub, Publish, Reconnect, NATSPublish, Saturate:
	default:
		return fmt.Errorf("unknown scenario %q", s.Scenario)
	}
	switch s.Target {
	case TargetParley:
	case TargetCentrifugo, TargetNATS:
		if !s.driven() {
			return fmt.Errorf("scenario %s measures Parley only (target %s: idle, fanout or saturate)", s.Scenario, s.Target)
		}
	default:
		return fmt.Errorf("unknown target %q", s.Target)
	}
	if len(s.URLs) == 0 {
		return fmt.Errorf("no edge URL")
	}
	if s.Conns <= 0 || s.Workers <= 0 || s.Rooms <= 0 || s.Rate < 0 || s.Duration <= 0 || s.DialConcurrency < 0 {
		return fmt.Errorf("conns, workers, rooms and duration must be positive, rate and dial concurrency not negative")
	}
	if s.Rate == 0 && !s.driven() && s.Scenario != NATSPublish {
		return fmt.Errorf("an unpaced connect (rate 0) is for the idle, fanout and saturate scenarios")
	}
	if (s.Scenario == Fanout || s.Scenario == Saturate) && s.Target == TargetCentrifugo && s.CentrifugoAPI == "" {
		return fmt.Errorf("%s on centrifugo needs its HTTP API for the backend publisher", s.Scenario)
	}
	if s.Scenario == Saturate && (s.StartRate <= 0 || s.StepDuration <= 0 || s.MaxSteps <= 0 || s.MaxSteps > maxSteps ||
		s.P99Limit <= 0 || s.Grace < 0 || (s.StepAdd <= 0 && s.StepFactor <= 1) || s.StepAdd < 0) {
		return fmt.Errorf("saturate needs a positive start rate, step duration and p99 limit, 1..%d steps, and a step factor above 1 or a positive step add", maxSteps)
	}
	if s.Backlog < 0 || (s.Backlog > 0 && s.Scenario != Reconnect) {
		return fmt.Errorf("backlog is for the reconnect scenario, and not negative")
	}
	if (s.Scenario == Reconnect || s.Scenario == NATSPublish ||
		((s.Scenario == Fanout || s.Scenario == Saturate) && s.Target != TargetCentrifugo)) && s.NATS == "" {
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
	// Driven runs (step and final reports): what the worker's subscribers
	// received of one step's messages, by room, and when its connect phase
	// ran (for the connect rate).
	Step      int        `json:"step,omitempty"`
	ConnStart int64      `json:"conn_start,omitempty"` // ready: the connect phase, Unix ns
	ConnEnd   int64      `json:"conn_end,omitempty"`
	StepRooms []stepRoom `json:"step_rooms,omitempty"`
}

// stepRoom is what one worker's subscribers of a room received of one
// step's messages: Uniq distinct messages in all (each subscriber counted),
// Dups repeated ones, Disorder ones that came after a higher seq.
type stepRoom struct {
	Room     string `json:"room"`
	Subs     int    `json:"subs"`
	Uniq     uint64 `json:"uniq"`
	Dups     uint64 `json:"dups"`
	Disorder uint64 `json:"disorder"`
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
