package archive

import "github.com/prometheus/client_golang/prometheus"

// Metrics is the archiver's instrumentation.
type Metrics struct {
	Pending      prometheus.Gauge     // consumer: stored messages not yet delivered to an archiver (the lag)
	AckPending   prometheus.Gauge     // consumer: delivered, not yet acked
	LagSeconds   prometheus.Gauge     // age of the oldest message not yet archived (0 when caught up)
	Archived     prometheus.Counter   // records newly written
	Duplicates   prometheus.Counter   // redelivered records already stored
	Poison       prometheus.Counter   // messages recorded as poison and skipped
	Batches      prometheus.Counter   // committed batches
	BatchSize    prometheus.Histogram // messages per committed batch
	WriteSeconds prometheus.Histogram // one batch's transaction
	StoreErrors  prometheus.Counter   // failed writes (each retry counts)
	StoreUp      prometheus.Gauge     // 1 when the last write or ping succeeded
	History      *prometheus.CounterVec
}

// NewMetrics registers the archiver's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Pending:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_archiver_consumer_pending", Help: "Stored chat messages the archive consumer has not delivered yet (lag in messages)."}),
		AckPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_archiver_consumer_ack_pending", Help: "Messages delivered to archivers and not yet acked."}),
		LagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_archiver_lag_seconds", Help: "Age of the newest message this archiver committed when it committed it."}),
		Archived:   prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_archiver_messages_total", Help: "Messages newly written to the store."}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_archiver_duplicates_total", Help: "Redelivered messages that were stored already (skipped by seq)."}),
		Poison:     prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_archiver_poison_total", Help: "Undecodable or refused messages recorded in the poison table and skipped."}),
		Batches:    prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_archiver_batches_total", Help: "Committed batches."}),
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parley_archiver_batch_size", Help: "Messages per committed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 7)}),
		WriteSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parley_archiver_write_seconds", Help: "Time to write and commit one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		StoreErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_archiver_store_errors_total", Help: "Failed batch writes (each retry counts)."}),
		StoreUp:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_archiver_store_up", Help: "1 when the last store write or ping succeeded."}),
		History:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_archiver_history_requests_total", Help: "History requests by result (ok or error code)."}, []string{"result"}),
	}
	reg.MustRegister(m.Pending, m.AckPending, m.LagSeconds, m.Archived, m.Duplicates, m.Poison, m.Batches, m.BatchSize,
		m.WriteSeconds, m.StoreErrors, m.StoreUp, m.History)
	return m
}
