package archive

import (
	"net/http"

	"github.com/parley-mesh/parley/internal/metrics"
)

// Handler serves /metrics, /healthz (the process is alive) and /readyz
// (consumer provisioned, history served, NATS connected, store answering).
func (a *Archiver) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(a.registry))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case !a.ready.Load():
			http.Error(w, "starting: waiting for the chat stream or the store", http.StatusServiceUnavailable)
		case !a.nc.IsConnected():
			http.Error(w, "not connected to NATS", http.StatusServiceUnavailable)
		case !a.storeOK.Load():
			http.Error(w, "store unavailable", http.StatusServiceUnavailable)
		default:
			w.Write([]byte("ready\n"))
		}
	})
	return mux
}
