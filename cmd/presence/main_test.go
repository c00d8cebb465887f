package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/config/configtest"
)

func TestMain(m *testing.M) {
	configtest.MaybeMain(main)
	os.Exit(m.Run())
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParse(t *testing.T) {
	o, err := parse([]string{"--nats", "nats://n:4222", "--lease-interval", "2s"}, env(map[string]string{
		"PARLEY_LEASE_INTERVAL": "3s", "PARLEY_LEASE_TTL": "5s", "PARLEY_ID": "presence-a",
	}))
	if err != nil {
		t.Fatal(err)
	}
	c := o.presence
	if c.LeaseInterval != 2*time.Second || c.LeaseTTL != 5*time.Second || c.ID != "presence-a" || o.nats.URLs != "nats://n:4222" {
		t.Fatalf("options %+v", o)
	}
}

// Every class of invalid flag value makes the real binary exit 2 with one
// line naming the flag (a valid command line would try to reach NATS on
// port 1 and exit 1, which fails the case too).
func TestBadFlagsExitTwoWithOneLine(t *testing.T) {
	nats := func(args ...string) []string { return append([]string{"--nats", "nats://127.0.0.1:1"}, args...) }
	configtest.CheckUsageErrors(t, "presence", []configtest.Case{
		{Name: "required", Args: nil, Want: []string{"--nats"}},
		{Name: "negative", Args: nats("--max-pending", "-1"), Want: []string{"--max-pending"}},
		{Name: "negative", Args: nats("--sync-backoff", "-2s"), Want: []string{"--sync-backoff"}},
		{Name: "zero", Args: nats("--max-inflight", "0"), Want: []string{"--max-inflight"}},
		{Name: "zero", Args: nats("--kv-replicas", "0"), Want: []string{"--kv-replicas"}},
		{Name: "zero", Args: nats("--write-timeout", "0s"), Want: []string{"--write-timeout"}},
		{Name: "unitless-duration", Args: nats("--edge-timeout", "10"), Want: []string{"--edge-timeout", "unit"}},
		{Name: "unitless-duration", Args: nats(), Env: map[string]string{"PARLEY_LEASE_TTL": "4"}, Want: []string{"PARLEY_LEASE_TTL", "--lease-ttl"}},
		{Name: "not-a-number", Args: nats("--max-pending", "lots"), Want: []string{"--max-pending"}},
		{Name: "unknown-flag", Args: nats("--edge-timout", "10s"), Want: []string{"--edge-timout"}},
		{Name: "stray-argument", Args: nats("provision"), Want: []string{`"provision"`}},
		{Name: "address", Args: nats("--listen", "localhost"), Want: []string{"--listen"}},
		{Name: "address", Args: []string{"--nats", "nats://:4222"}, Want: []string{"--nats"}},
		{Name: "name", Args: nats("--id", "a.b"), Want: []string{"--id"}},
		{Name: "enum", Args: nats("--log-level", "verbose"), Want: []string{"--log-level"}},
		{Name: "conflict", Args: nats("--lease-ttl", "1s"), Want: []string{"--lease-ttl", "--lease-interval"}},
		{Name: "size", Args: nats("--memory-limit", "-1GiB"), Want: []string{"--memory-limit"}},
		{Name: "conflict", Args: nats("--nats-password", "pw"), Want: []string{"--nats-password", "--nats-user"}},
		{Name: "otel-exporter", Args: nats(), Env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, Want: []string{"OTEL_TRACES_EXPORTER", "otlp"}},
		{Name: "otel-protocol", Args: nats(), Env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, Want: []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"}},
	})
}

// --help exits 0 and says what the binary really does with an empty --nats.
func TestHelp(t *testing.T) {
	r := configtest.Run(t, []string{"--help"}, nil)
	for _, w := range []string{"--nats is required", "PARLEY_LOG_LEVEL", "127.0.0.1:8081", "comma-separated (required)"} {
		if r.Code != 0 || !strings.Contains(r.Stdout, w) {
			t.Errorf("presence --help: exit %d, lacks %q:\n%s", r.Code, w, r.Stdout)
		}
	}
	if strings.Contains(r.Stdout, "embedded") {
		t.Errorf("presence --help promises an embedded server:\n%s", r.Stdout)
	}
}
