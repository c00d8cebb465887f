package metrics_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-mesh/parley/internal/metrics"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

// The contract every component's probes and scrapes rely on: /healthz is
// alive whatever the readiness, /readyz names the first unmet requirement,
// and the connection gauge follows what it reads.
func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	var started, connected atomic.Bool
	metrics.RegisterConnected(reg, prometheus.GaugeOpts{Name: "parley_test_nats_connected", Help: "test"}, connected.Load)
	h := metrics.Endpoints(reg,
		metrics.Requirement{Unmet: "starting", Met: started.Load},
		metrics.Requirement{Unmet: "not connected to NATS", Met: connected.Load},
	)
	for _, c := range []struct {
		started, connected bool
		code               int
		body, gauge        string
	}{
		{false, false, http.StatusServiceUnavailable, "starting\n", "parley_test_nats_connected 0"},
		{true, false, http.StatusServiceUnavailable, "not connected to NATS\n", "parley_test_nats_connected 0"},
		{true, true, http.StatusOK, "ready\n", "parley_test_nats_connected 1"},
	} {
		started.Store(c.started)
		connected.Store(c.connected)
		if code, body := get(t, h, "/healthz"); code != http.StatusOK || body != "ok\n" {
			t.Errorf("%+v: /healthz %d %q", c, code, body)
		}
		if code, body := get(t, h, "/readyz"); code != c.code || body != c.body {
			t.Errorf("%+v: /readyz %d %q, want %d %q", c, code, body, c.code, c.body)
		}
		if code, body := get(t, h, "/metrics"); code != http.StatusOK || !strings.Contains(body, c.gauge+"\n") {
			t.Errorf("%+v: /metrics %d lacks %q:\n%s", c, code, c.gauge, body)
		}
	}
}
