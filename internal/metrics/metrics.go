// Package metrics declares the Prometheus metrics Parley components export
// and serves them, with the health endpoints, the same way for each of them
// (endpoints.go). Each component builds its own registry, so tests never
// share or reset global state.
package metrics

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves reg in the Prometheus text format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// Edge is the edge's instrumentation.
type Edge struct {
	Connections      prometheus.Gauge
	ConnectsTotal    *prometheus.CounterVec // result: ok, unauthorized, refused, forbidden, user_limit, ip_limit
	Disconnects      *prometheus.CounterVec // reason: client, slow_consumer, token_expired, shutdown, policy, replay_failed, error
	Subscriptions    prometheus.Gauge       // client subscriptions to rooms
	LiveSubjects     prometheus.Gauge       // NATS subscriptions held by this edge (one per room)
	FramesIn         prometheus.Counter
	FramesOut        prometheus.Counter
	BytesIn          prometheus.Counter
	BytesOut         prometheus.Counter
	Requests         *prometheus.CounterVec // op, result (ok or error code)
	PublishLatency   prometheus.Histogram   // client pub → JetStream ack
	Deliveries       prometheus.Counter     // messages queued to connections
	DroppedLive      prometheus.Counter     // live messages not decodable
	PublishesPending prometheus.Gauge
	Recoveries       *prometheus.CounterVec // result: recovered, not_recovered, failed
	Replayed         prometheus.Counter     // messages replayed by sub since/last
	// ReplayedFromMemory is the part of Replayed served from the rooms'
	// recent messages, without reading the stream.
	ReplayedFromMemory prometheus.Counter
	// ReplayedFromConsumer is the part of Replayed read through an ordered
	// consumer by long resumes (more than --max-recover messages, or more
	// than half the connection's queue in bytes).
	ReplayedFromConsumer prometheus.Counter
	// ReplaysActive counts long resumes being replayed (at most
	// --max-replays); Replays counts them by how they ended: completed,
	// cancelled (the client left or unsubscribed), failed (the stream
	// stopped answering: closed with 1013), refused (no slot in time:
	// unavailable).
	ReplaysActive   prometheus.Gauge
	Replays         *prometheus.CounterVec
	RecoverySeconds prometheus.Histogram
	GapsRepaired    prometheus.Counter
	GapMessages     prometheus.Counter
	GapsUnrepaired  prometheus.Counter
	HistoryRequests prometheus.Counter
	// RoomCacheBytes is what the rooms' recent messages hold on this edge.
	// The edge keeps the count itself (one atomic add per cached message,
	// no float gauge on the delivery path); parley_edge_room_cache_bytes
	// reads it at scrape time.
	RoomCacheBytes atomic.Int64
	// RoomCacheEvictions counts recent messages a room dropped (or did not
	// keep) because of a byte bound, by bound: room or total.
	RoomCacheEvictions *prometheus.CounterVec
	// Panics counts recovered panics by where they happened (upgrade, read,
	// handle, write, dispatch, timer, replay): each one closed one connection (1011) or
	// dropped one live message, never the process.
	Panics *prometheus.CounterVec
	// ConnectedUsers and ConnectedAddrs count the distinct users and client
	// addresses holding connections: what the per-user and per-IP limits
	// are measured against.
	ConnectedUsers prometheus.Gauge
	ConnectedAddrs prometheus.Gauge
}

// NewEdge registers the edge's metrics on reg.
func NewEdge(reg prometheus.Registerer) *Edge {
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Edge{
		Connections:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_edge_connections", Help: "Open WebSocket connections."}),
		ConnectsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_edge_connects_total", Help: "WebSocket upgrade attempts by result."}, []string{"result"}),
		Disconnects:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_edge_disconnects_total", Help: "Closed connections by reason."}, []string{"reason"}),
		Subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_edge_subscriptions", Help: "Room subscriptions held by clients."}),
		LiveSubjects:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_edge_live_subscriptions", Help: "NATS subscriptions held by the edge (one per room, DM user and broadcast)."}),
		FramesIn:      prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_frames_in_total", Help: "WebSocket frames received."}),
		FramesOut:     prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_frames_out_total", Help: "WebSocket frames sent."}),
		BytesIn:       prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_bytes_in_total", Help: "WebSocket payload bytes received."}),
		BytesOut:      prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_bytes_out_total", Help: "WebSocket payload bytes sent."}),
		Requests:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_edge_requests_total", Help: "Client requests by op and result."}, []string{"op", "result"}),
		PublishLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "parley_edge_publish_seconds",
			Help:    "Time from a client's pub to JetStream's ack.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
		}),
		Deliveries:       prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_deliveries_total", Help: "Messages queued to client connections."}),
		DroppedLive:      prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_live_dropped_total", Help: "Live NATS messages dropped because they lacked stream headers."}),
		PublishesPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_edge_publishes_pending", Help: "Client publishes awaiting a JetStream ack."}),
	}
	m.Recoveries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_edge_recoveries_total", Help: "Subscriptions with since/last by result."}, []string{"result"})
	m.Replayed = prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_replayed_messages_total", Help: "Messages replayed from the stream to resuming subscribers."})
	m.ReplayedFromMemory = prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_replayed_from_memory_total", Help: "Replayed messages served from the edge's recent messages of the room, without reading the stream."})
	m.ReplayedFromConsumer = prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_replayed_from_consumer_total", Help: "Replayed messages read through an ordered consumer by long resumes."})
	m.ReplaysActive = prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_edge_replays_active", Help: "Long resumes being replayed, paced by their connection's queue (at most --max-replays)."})
	m.Replays = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_edge_replays_total", Help: "Long resumes by how they ended: completed, cancelled, failed, refused."}, []string{"result"})
	f(m.ReplayedFromConsumer)
	f(m.ReplaysActive)
	f(m.Replays)
	m.RecoverySeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parley_edge_recovery_seconds", Help: "Time to serve a sub with since/last.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)})
	m.GapsRepaired = prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_gaps_repaired_total", Help: "Gaps in the live feed repaired from the stream."})
	m.GapMessages = prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_gap_messages_total", Help: "Messages read from the stream to repair live gaps."})
	m.GapsUnrepaired = prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_gaps_unrepaired_total", Help: "Live gaps the stream could not fill."})
	m.HistoryRequests = prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_edge_history_requests_total", Help: "history requests served."})
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "parley_edge_room_cache_bytes", Help: "Bytes held by the rooms' recent messages (frames, per-message overhead, arrays); at most --room-cache-total-bytes."},
		func() float64 { return float64(m.RoomCacheBytes.Load()) }))
	m.RoomCacheEvictions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_edge_room_cache_evictions_total", Help: "Recent messages a room dropped from (or did not keep in) its cache because of a byte bound: room (--room-cache-bytes) or total (--room-cache-total-bytes)."}, []string{"bound"})
	f(m.RoomCacheEvictions)
	m.Panics = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_edge_panics_total", Help: "Recovered panics by where they happened; each closed one connection or dropped one live message."}, []string{"where"})
	f(m.Panics)
	m.ConnectedUsers = prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_edge_connected_users", Help: "Distinct users with at least one connection."})
	m.ConnectedAddrs = prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_edge_connected_addresses", Help: "Distinct client addresses (IPv6: /64 prefixes) with at least one connection."})
	f(m.ConnectedUsers)
	f(m.ConnectedAddrs)
	for _, c := range []prometheus.Collector{m.Recoveries, m.Replayed, m.ReplayedFromMemory, m.RecoverySeconds, m.GapsRepaired, m.GapMessages, m.GapsUnrepaired, m.HistoryRequests, m.Connections, m.ConnectsTotal, m.Disconnects, m.Subscriptions, m.LiveSubjects,
		m.FramesIn, m.FramesOut, m.BytesIn, m.BytesOut, m.Requests, m.PublishLatency, m.Deliveries, m.DroppedLive,
		m.PublishesPending} {
		f(c)
	}
	return m
}
