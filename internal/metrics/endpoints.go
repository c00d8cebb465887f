package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
)

// A Requirement is one condition of a component's readiness: while Met
// reports false, /readyz answers 503 with Unmet.
type Requirement struct {
	Unmet string
	Met   func() bool
}

// Endpoints returns the HTTP endpoints every component serves, so that
// Prometheus, Kubernetes probes and the Helm chart see the same contract on
// each of them: reg at /metrics; /healthz, 200 "ok" while the process
// answers at all (a liveness probe: failing it restarts the pod); /readyz,
// 200 "ready" when every requirement is met, else 503 with the first unmet
// one's reason (a readiness probe: failing it only takes the pod out of the
// Service, which is what a NATS outage or a drain calls for). A component
// adds its own routes (the edge's /ws) to the mux it gets.
func Endpoints(reg *prometheus.Registry, ready ...Requirement) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", Handler(reg))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		for _, r := range ready {
			if !r.Met() {
				http.Error(w, r.Unmet, http.StatusServiceUnavailable)
				return
			}
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// RegisterConnected registers a gauge of 1 while connected says so, else 0,
// read at scrape time. Every component exports one for its NATS connection
// (opts names it, parley_<component>_nats_connected), so an alert can tell
// a component cut off from NATS from one that is merely idle.
func RegisterConnected(reg prometheus.Registerer, opts prometheus.GaugeOpts, connected func() bool) {
	reg.MustRegister(prometheus.NewGaugeFunc(opts, func() float64 {
		if connected() {
			return 1
		}
		return 0
	}))
}
