package edgetest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// fatalTB records the first Fatalf and stops the helper there, as the real
// one would stop the test.
type fatalTB struct {
	testing.TB
	msg string
}

type stopped struct{}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(stopped{})
}

func read(reg *prometheus.Registry, series string) (v float64, fatal string) {
	tb := &fatalTB{}
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(stopped); !ok {
				panic(r)
			}
			fatal = tb.msg
		}
	}()
	return RegistryMetric(tb, reg, series), ""
}

func TestRegistryMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_test_connections", Help: "h"})
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_test_disconnects_total", Help: "h"}, []string{"reason"})
	reg.MustRegister(g, v)
	g.Set(3)
	for _, c := range []struct {
		series string
		want   float64
		fatal  string // part of the failure, "" for none
	}{
		{"parley_test_connections", 3, ""},
		// A declared vector nothing counted yet is 0, as Prometheus reads it.
		{`parley_test_disconnects_total{reason="slow_consumer"}`, 0, ""},
		{"parley_test_renamed", 0, "not registered"},
		{`parley_test_disconnects_total{reasn="slow_consumer"}`, 0, "no label reasn"},
		{"parley_test_connections{", 0, "not a series"},
	} {
		got, fatal := read(reg, c.series)
		if got != c.want || (c.fatal == "") != (fatal == "") || !strings.Contains(fatal, c.fatal) {
			t.Errorf("%s: %v, failure %q; want %v, failure with %q", c.series, got, fatal, c.want, c.fatal)
		}
	}
	v.WithLabelValues("slow_consumer").Add(2)
	if got, fatal := read(reg, `parley_test_disconnects_total{reason="slow_consumer"}`); got != 2 || fatal != "" {
		t.Errorf("counted series: %v %q", got, fatal)
	}
	if got, fatal := read(reg, `parley_test_disconnects_total{reason="client"}`); got != 0 || fatal != "" {
		t.Errorf("uncounted series of a vector with others: %v %q", got, fatal)
	}
}
