package edgetest

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/parley-mesh/parley/internal/edge"
)

// Metric is the value of one series of e's registry, written as in the
// Prometheus text format: parley_edge_connections, or
// parley_edge_disconnects_total{reason="slow_consumer"}. A series of a
// declared vector that nothing has counted yet is 0, as Prometheus reads
// it; a name or label the edge does not declare fails the test, so a renamed
// metric cannot make a check for 0 pass by being absent.
func Metric(t testing.TB, e *edge.Edge, series string) float64 {
	t.Helper()
	return RegistryMetric(t, e.Registry(), series)
}

var seriesRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$`)
var labelRE = regexp.MustCompile(`^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"$`)

// RegistryMetric is Metric for any registry (a presence worker's, an
// archiver's).
func RegistryMetric(t testing.TB, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	m := seriesRE.FindStringSubmatch(series)
	if m == nil {
		t.Fatalf("metric %q: not a series (name or name{label=\"value\",…})", series)
	}
	name, want := m[1], map[string]string{}
	if m[2] != "" {
		for part := range strings.SplitSeq(m[2], ",") {
			l := labelRE.FindStringSubmatch(strings.TrimSpace(part))
			if l == nil {
				t.Fatalf("metric %q: bad label %q", series, part)
			}
			want[l[1]] = l[2]
		}
	}
	labels, ok := declared(t, reg, name)
	if !ok {
		t.Fatalf("metric %s is not registered", name)
	}
	for k := range want {
		if !slices.Contains(labels, k) {
			t.Fatalf("metric %s has no label %s (it has %v)", name, k, labels)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, s := range f.GetMetric() {
			if sameLabels(s.GetLabel(), want) {
				return value(t, series, s)
			}
		}
	}
	return 0 // declared, not yet counted
}

func sameLabels(have []*dto.LabelPair, want map[string]string) bool {
	if len(have) != len(want) {
		return false
	}
	for _, l := range have {
		if v, ok := want[l.GetName()]; !ok || v != l.GetValue() {
			return false
		}
	}
	return true
}

func value(t testing.TB, series string, s *dto.Metric) float64 {
	t.Helper()
	switch {
	case s.Counter != nil:
		return s.Counter.GetValue()
	case s.Gauge != nil:
		return s.Gauge.GetValue()
	case s.Untyped != nil:
		return s.Untyped.GetValue()
	}
	t.Fatalf("metric %s is neither a counter nor a gauge", series)
	return 0
}

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

// declared reports whether reg declares a metric name, and its variable
// labels. Gather cannot tell: a vector without series is left out of it
// (and of /metrics). Desc has no accessors, so its String is read; a form
// this does not recognise fails the test instead of passing it.
func declared(t testing.TB, reg *prometheus.Registry, name string) ([]string, bool) {
	t.Helper()
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	var descs []string
	for d := range ch { // all of them before a Fatal, which would strand Describe
		descs = append(descs, d.String())
	}
	var labels []string
	found, read := false, 0
	for _, d := range descs {
		m := descRE.FindStringSubmatch(d)
		if m == nil {
			continue
		}
		read++
		if m[1] != name {
			continue
		}
		found = true
		for l := range strings.SplitSeq(m[2], ",") {
			if l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"); l != "" {
				labels = append(labels, l)
			}
		}
	}
	if read == 0 {
		t.Fatalf("cannot read the registry's metric descriptors: prometheus.Desc.String changed form")
	}
	return labels, found
}
