package metrics

import "github.com/prometheus/client_golang/prometheus"

// Presence is the presence worker's instrumentation.
type Presence struct {
	Events        *prometheus.CounterVec // kind
	Invalid       prometheus.Counter     // edge messages that failed to decode or validate
	KVWrites      *prometheus.CounterVec // op: put, purge; result: ok, conflict, error
	Announcements *prometheus.CounterVec // op: join, leave, online, offline
	SyncRequests  *prometheus.CounterVec // reason: gap, digest, snapshot
	EdgesExpired  prometheus.Counter
	Queries       *prometheus.CounterVec // result: ok, bad_request, busy
	Writer        prometheus.Gauge       // 1 while this replica holds the writer lease
	Edges         prometheus.Gauge
	Present       prometheus.Gauge // (room, user) and online entries with ≥1 connection
	Inflight      prometheus.Gauge // KV writes awaiting their ack
	Queued        prometheus.Gauge // keys waiting to be written
}

// NewPresence registers the presence worker's metrics on reg.
func NewPresence(reg prometheus.Registerer) *Presence {
	m := &Presence{
		Events:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_presence_edge_messages_total", Help: "Messages from edges by kind."}, []string{"kind"}),
		Invalid:       prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_presence_invalid_messages_total", Help: "Edge messages dropped as undecodable or invalid."}),
		KVWrites:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_presence_kv_writes_total", Help: "KV writes by op and result."}, []string{"op", "result"}),
		Announcements: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_presence_announcements_total", Help: "Join/leave/online/offline announcements published."}, []string{"op"}),
		SyncRequests:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_presence_sync_requests_total", Help: "Snapshots asked of edges, by reason."}, []string{"reason"}),
		EdgesExpired:  prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_presence_edges_expired_total", Help: "Edges removed because their heartbeat stopped."}),
		Queries:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_presence_queries_total", Help: "Presence queries by result."}, []string{"result"}),
		Writer:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_presence_writer", Help: "1 while this replica holds the writer lease."}),
		Edges:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_presence_edges", Help: "Edges known to this replica."}),
		Present:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_presence_entries", Help: "Present (room, user) and online entries."}),
		Inflight:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_presence_kv_inflight", Help: "KV writes awaiting their ack."}),
		Queued:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_presence_kv_queued", Help: "Keys waiting to be written."}),
	}
	for _, c := range []prometheus.Collector{m.Events, m.Invalid, m.KVWrites, m.Announcements, m.SyncRequests, m.EdgesExpired,
		m.Queries, m.Writer, m.Edges, m.Present, m.Inflight, m.Queued} {
		reg.MustRegister(c)
	}
	return m
}
