package archive

import (
	"net/http"

	"github.com/parley-mesh/parley/internal/metrics"
)

// Handler serves /metrics, /healthz (the process is alive) and /readyz
// (consumer provisioned, history served, NATS connected, store answering).
func (a *Archiver) Handler() http.Handler {
	return metrics.Endpoints(a.registry,
		metrics.Requirement{Unmet: "starting: waiting for the chat stream or the store", Met: a.ready.Load},
		metrics.Requirement{Unmet: "not connected to NATS", Met: a.nc.IsConnected},
		metrics.Requirement{Unmet: "store unavailable", Met: a.storeOK.Load},
	)
}
