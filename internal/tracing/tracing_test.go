package tracing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseEnv(t *testing.T) {
	for _, c := range []struct {
		name    string
		env     map[string]string
		enabled bool
		err     string // part of the error, "" for none
	}{
		{"nothing set: off", nil, false, ""},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, true, ""},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, true, ""},
		{"exporter otlp, default endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, ""},
		{"exporter spelled loosely", map[string]string{"OTEL_TRACES_EXPORTER": " OTLP "}, true, ""},
		{"none wins over an endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, false, ""},
		{"sdk disabled", map[string]string{"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, false, ""},
		{"sdk not disabled", map[string]string{"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, true, ""},
		{"unsupported exporter", map[string]string{"OTEL_TRACES_EXPORTER": "otlp,zipkin"}, false, `OTEL_TRACES_EXPORTER="zipkin"`},
		{"grpc refused when on", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, false, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"grpc ignored when off", map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, false, ""},
		{"traces protocol wins", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, ""},
		{"traces protocol refused", map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, false, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"},
	} {
		t.Run(c.name, func(t *testing.T) {
			env, err := ParseEnv(envOf(c.env))
			switch {
			case c.err == "" && err != nil:
				t.Fatalf("error %v", err)
			case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrEnv)):
				t.Fatalf("error %v, want one with %q", err, c.err)
			case c.err == "" && env.Enabled != c.enabled:
				t.Fatalf("enabled %t, want %t", env.Enabled, c.enabled)
			}
		})
	}
	env, _ := ParseEnv(envOf(map[string]string{"OTEL_SERVICE_NAME": " chat-edge "}))
	if env.ServiceName != "chat-edge" {
		t.Fatalf("service name %q", env.ServiceName)
	}
}

const (
	validParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	validState  = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
)

func TestParseFormat(t *testing.T) {
	sc := Parse(validParent, validState)
	if !sc.IsValid() || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || sc.SpanID().String() != "00f067aa0ba902b7" || !sc.IsSampled() || !sc.IsRemote() {
		t.Fatalf("parsed %+v", sc)
	}
	if p, s := Format(sc); p != validParent || s != validState {
		t.Fatalf("formatted %q %q", p, s)
	}
	for _, bad := range []string{
		"",
		"garbage",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace id
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero span id
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
		validParent + "\r\nNats-Msg-Id: forged",                   // header injection
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
	} {
		if sc := Parse(bad, validState); sc.IsValid() {
			t.Errorf("Parse(%q) is valid: %+v", bad, sc)
		}
		if p, s := Format(Parse(bad, validState)); p != "" || s != "" {
			t.Errorf("Format of Parse(%q) = %q %q, want nothing", bad, p, s)
		}
	}
	// A bad tracestate is dropped; the traceparent stands.
	p, s := Format(Parse(validParent, "not a list member\r\nx: y"))
	if p != validParent || s != "" {
		t.Fatalf("with a bad tracestate: %q %q", p, s)
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), Parse(validParent, validState))
	h := nats.Header{}
	Inject(ctx, h)
	if h.Get(HeaderTraceparent) != validParent || h.Get(HeaderTracestate) != validState {
		t.Fatalf("injected %v", h)
	}
	got := trace.SpanContextFromContext(FromHeader(context.Background(), h))
	if !got.Equal(Parse(validParent, validState)) {
		t.Fatalf("extracted %+v", got)
	}
	if FromHeader(context.Background(), nil) != context.Background() {
		t.Fatal("no header should leave the context alone")
	}
	empty := nats.Header{}
	Inject(context.Background(), empty)
	if len(empty) != 0 {
		t.Fatalf("a context without a span injected %v", empty)
	}
}

func TestLogHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(LogHandler(slog.NewJSONHandler(&buf, nil))).With("component", "test")
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), Parse(validParent, ""))
	log.InfoContext(ctx, "inside")
	log.Info("outside")
	log.InfoContext(context.Background(), "no span")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("lines: %q", lines)
	}
	var in map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &in); err != nil {
		t.Fatal(err)
	}
	if in["trace_id"] != "4bf92f3577b34da6a3ce929d0e0e4736" || in["span_id"] != "00f067aa0ba902b7" || in["component"] != "test" {
		t.Fatalf("inside a span: %s", lines[0])
	}
	for _, l := range lines[1:] {
		if strings.Contains(l, "trace_id") {
			t.Fatalf("outside a span: %s", l)
		}
	}
}

func TestMessageAttributes(t *testing.T) {
	got := map[string]string{}
	for _, kv := range Message("parley.live.chat.room.lobby", OpDeliver, 42) {
		got[string(kv.Key)] = kv.Value.Emit()
	}
	want := map[string]string{
		"messaging.system": "nats", "messaging.destination.name": "parley.live.chat.room.lobby",
		"messaging.operation.name": "deliver", "messaging.operation.type": "process",
		"parley.room": "lobby", "parley.seq": "42",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	dm := map[string]string{}
	for _, kv := range Message("chat.dm.bob", OpPublish, 0) {
		dm[string(kv.Key)] = kv.Value.Emit()
	}
	if dm["parley.to"] != "bob" || dm["messaging.operation.type"] != "send" || dm["parley.seq"] != "" || dm["parley.room"] != "" {
		t.Errorf("dm publish: %v", dm)
	}
}

// Start with the environment asking for OTLP exports spans, on the way
// out, to the endpoint the standard variable names, over HTTP/protobuf, with
// the service name OTEL_SERVICE_NAME gives (the binary's own otherwise).
func TestStartExportsOverOTLPHTTP(t *testing.T) {
	var mu sync.Mutex
	var reqs []*collectortrace.ExportTraceServiceRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" || proto.Unmarshal(body, &req) != nil {
			t.Errorf("unexpected export: %s %s %s", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		reqs = append(reqs, &req)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(nil)
	}))
	defer srv.Close()

	for _, c := range []struct{ serviceEnv, want string }{{"", "parley-test"}, {"chat-edge-eu", "chat-edge-eu"}} {
		mu.Lock()
		reqs = nil
		mu.Unlock()
		vars := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL, "OTEL_SERVICE_NAME": c.serviceEnv}
		// The SDK reads the endpoint and the rest from the process
		// environment itself.
		for k, v := range vars {
			t.Setenv(k, v)
		}
		env, err := ParseEnv(os.Getenv)
		if err != nil || !env.Enabled {
			t.Fatalf("env %+v %v", env, err)
		}
		tp, shutdown, err := env.Start(context.Background(), "parley-test")
		if err != nil {
			t.Fatal(err)
		}
		_, span := tp.Tracer("test").Start(context.Background(), SpanPublish)
		span.End()
		if err := shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		var names, services []string
		for _, r := range reqs {
			for _, rs := range r.ResourceSpans {
				for _, a := range rs.Resource.Attributes {
					if a.Key == "service.name" {
						services = append(services, a.Value.GetStringValue())
					}
				}
				for _, ss := range rs.ScopeSpans {
					for _, s := range ss.Spans {
						names = append(names, s.Name)
					}
				}
			}
		}
		mu.Unlock()
		if len(names) != 1 || names[0] != SpanPublish || len(services) != 1 || services[0] != c.want {
			t.Fatalf("OTEL_SERVICE_NAME %q: exported spans %v of services %v, want [%s] of [%s]", c.serviceEnv, names, services, SpanPublish, c.want)
		}
	}
}

func TestStartOff(t *testing.T) {
	tp, shutdown, err := Env{}.Start(context.Background(), "parley-test")
	if tp != nil || err != nil || shutdown(context.Background()) != nil {
		t.Fatalf("off: %v %v", tp, err)
	}
	if Tracer(nil, "x") != nil {
		t.Fatal("a nil provider must give a nil tracer")
	}
}
