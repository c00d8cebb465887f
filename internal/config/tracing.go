package config

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/tracing"
)

// Tracing is the OTEL_* environment every binary reads (docs/tracing.md):
// off unless it names an OTLP exporter or endpoint.
type Tracing struct{ env tracing.Env }

// Read parses the environment; it is one of a binary's checks (an argument
// of First), so a value this build cannot honour (OTEL_TRACES_EXPORTER=zipkin,
// OTLP over gRPC) stops the binary with exit status 2 like a bad flag.
func (t *Tracing) Read(getenv func(string) string) error {
	env, err := tracing.ParseEnv(getenv)
	if err != nil {
		return Usagef("%w", err)
	}
	t.env = env
	return nil
}

// Start builds the tracer provider (nil when tracing is off) for service,
// the binary's name unless OTEL_SERVICE_NAME says otherwise; instance, when
// set, is service.instance.id (an edge's --edge-id, a presence --id). stop
// flushes the spans still batched, within 5 s; defer it so it runs after
// the component stopped.
func (t Tracing) Start(ctx context.Context, log *slog.Logger, service, instance string) (tp trace.TracerProvider, stop func(), err error) {
	var attrs []attribute.KeyValue
	if instance != "" {
		attrs = append(attrs, semconv.ServiceInstanceID(instance))
	}
	tp, shutdown, err := t.env.Start(ctx, service, attrs...)
	if err != nil {
		return nil, nil, err
	}
	if tp == nil {
		return nil, func() {}, nil
	}
	// The SDK reports what goes wrong in the background (a collector that
	// refuses or cannot be reached: once per failed batch) through its
	// global error handler, by default the standard log package in a
	// format of its own: into this binary's log instead.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: export failed", "err", err)
	}))
	log.Info("tracing: exporting spans over OTLP/HTTP", "service", serviceName(t.env, service))
	return tp, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			log.Warn("tracing: spans not flushed", "err", err)
		}
	}, nil
}

func serviceName(env tracing.Env, def string) string {
	if env.ServiceName != "" {
		return env.ServiceName
	}
	return def
}
