package client

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/protocol"
)

// withTrace puts the W3C trace context of ctx's span, when it has one, on
// req (pub and presence take traceparent and tracestate). Only the trace
// API is needed: the application's own OpenTelemetry SDK, whichever it
// configured, made the span.
func withTrace(ctx context.Context, req *protocol.Request) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	req.Traceparent, req.Tracestate = carrier.Get("traceparent"), carrier.Get("tracestate")
}
