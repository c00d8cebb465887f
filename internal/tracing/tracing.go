// Package tracing is Parley's OpenTelemetry tracing: the tracer provider a
// binary builds from the standard OTEL_* environment (off unless asked for),
// the W3C trace context as NATS headers and the client protocol carry it,
// the span and attribute names every component uses (docs/tracing.md), and
// a log/slog handler that puts trace_id on the lines logged inside a span.
//
// Components take a trace.TracerProvider in their Config and trace nothing
// when it is nil: no global provider, so tests inject one of their own and
// never have to reset anything.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Env is what the OTEL_* environment asks of a binary's tracing.
type Env struct {
	// Enabled: export spans over OTLP.
	Enabled bool
	// ServiceName is OTEL_SERVICE_NAME; empty: the binary's own name.
	ServiceName string
}

// ErrEnv marks an OTEL_* value this build cannot honour.
var ErrEnv = errors.New("unsupported OTEL environment")

// ParseEnv reads the standard variables that decide whether to trace.
// Tracing is off unless OTEL_TRACES_EXPORTER is otlp, or it is unset and an
// OTLP endpoint is given (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): the specification's default exporter
// is otlp, but an edge that quietly sends spans to localhost:4318 on every
// machine it runs on helps nobody. OTEL_SDK_DISABLED=true and
// OTEL_TRACES_EXPORTER=none turn it off whatever else is set. The exporter
// speaks OTLP over HTTP only: an exporter or protocol it cannot speak is an
// error rather than spans silently lost.
func ParseEnv(getenv func(string) string) (Env, error) {
	env := Env{ServiceName: strings.TrimSpace(getenv("OTEL_SERVICE_NAME"))}
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return env, nil
	}
	otlp := false
	for _, name := range strings.Split(getenv("OTEL_TRACES_EXPORTER"), ",") {
		switch name = strings.ToLower(strings.TrimSpace(name)); name {
		case "":
		case "none":
			return env, nil
		case "otlp":
			otlp = true
		default:
			return env, fmt.Errorf("%w: OTEL_TRACES_EXPORTER=%q: this build exports traces with otlp only (or none)", ErrEnv, name)
		}
	}
	if !otlp && getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return env, nil
	}
	for _, v := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		p := strings.TrimSpace(getenv(v))
		if p == "" {
			continue
		}
		if p != "http/protobuf" {
			return env, fmt.Errorf("%w: %s=%q: this build speaks OTLP over HTTP only (http/protobuf, the collector's port 4318)", ErrEnv, v, p)
		}
		break // the traces-specific one wins
	}
	env.Enabled = true
	return env, nil
}

// Start builds the tracer provider env asks for: nil when tracing is off,
// else an SDK provider batching spans to an OTLP/HTTP exporter. The SDK
// reads the rest of the standard environment itself: the endpoint,
// OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE,
// OTEL_TRACES_SAMPLER (default parentbased_always_on), OTEL_BSP_* and
// OTEL_RESOURCE_ATTRIBUTES. service names the binary unless
// OTEL_SERVICE_NAME does; attrs describe this instance. shutdown flushes
// what is batched; call it once, on the way out.
func (env Env) Start(ctx context.Context, service string, attrs ...attribute.KeyValue) (tp trace.TracerProvider, shutdown func(context.Context) error, err error) {
	if !env.Enabled {
		return nil, func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	// Later detectors win: the binary's name, then OTEL_RESOURCE_ATTRIBUTES
	// (and the SDK's reading of OTEL_SERVICE_NAME), then the service name
	// as this process was given it.
	opts := []resource.Option{
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(append([]attribute.KeyValue{semconv.ServiceName(service)}, attrs...)...),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithFromEnv(),
	}
	if env.ServiceName != "" {
		opts = append(opts, resource.WithAttributes(semconv.ServiceName(env.ServiceName)))
	}
	res, err := resource.New(ctx, opts...)
	if err != nil {
		// A partial resource is still usable (a detector failed); keep it.
		if res == nil {
			_ = exp.Shutdown(ctx)
			return nil, nil, fmt.Errorf("trace resource: %w", err)
		}
	}
	p := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return p, p.Shutdown, nil
}

// Tracer is tp's tracer for a component (its package path), nil when tp
// is: a nil tracer is how a component knows not to trace.
func Tracer(tp trace.TracerProvider, component string) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(component)
}

// Propagator is the W3C Trace Context (traceparent, tracestate), the only
// format Parley carries: no baggage, whose contents a client could fill
// with anything for every backend to read.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// Header names, as W3C Trace Context spells them and as NATS headers carry
// them (NATS header names are case-sensitive).
const (
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

// Parse reads a traceparent and tracestate as a client sent them. An
// invalid traceparent gives an invalid SpanContext (W3C: the receiver then
// starts a trace of its own); an invalid tracestate is dropped.
func Parse(traceparent, tracestate string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	c := pair{parent: traceparent, state: tracestate}
	return trace.SpanContextFromContext(Propagator.Extract(context.Background(), &c))
}

// Format is sc as W3C headers (both "" when sc is invalid): what Parse
// accepted, written back in canonical form, so that only well-formed values
// ever reach a NATS header.
func Format(sc trace.SpanContext) (traceparent, tracestate string) {
	if !sc.IsValid() {
		return "", ""
	}
	var c pair
	Propagator.Inject(trace.ContextWithSpanContext(context.Background(), sc), &c)
	return c.parent, c.state
}

// pair carries the two W3C fields outside of any header map.
type pair struct{ parent, state string }

func (p *pair) Get(key string) string {
	switch key {
	case HeaderTraceparent:
		return p.parent
	case HeaderTracestate:
		return p.state
	}
	return ""
}

func (p *pair) Set(key, value string) {
	switch key {
	case HeaderTraceparent:
		p.parent = value
	case HeaderTracestate:
		p.state = value
	}
}

func (p *pair) Keys() []string { return []string{HeaderTraceparent, HeaderTracestate} }
