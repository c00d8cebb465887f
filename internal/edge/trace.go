package edge

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/tracing"
	"github.com/parley-mesh/parley/protocol"
)

// tracerName is the instrumentation scope of the edge's spans.
const tracerName = "github.com/parley-mesh/parley/internal/edge"

// traceHeaders is a message's W3C trace context as its NATS headers carry
// it (traceparent, tracestate); zero: the message carries none.
type traceHeaders struct{ parent, state string }

// clientTrace is the trace context a client's request asks to continue:
// its traceparent, when valid, as a remote parent in ctx. Invalid values are
// ignored (W3C: the receiver starts a trace of its own): a request never
// fails because of tracing.
func clientTrace(ctx context.Context, req *protocol.Request) context.Context {
	if req.Traceparent == "" {
		return ctx
	}
	sc := tracing.Parse(req.Traceparent, req.Tracestate)
	if !sc.IsValid() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// startPublish begins a pub's span (a child of the client's traceparent, or
// the root of a new trace) and returns it with the trace context its
// message carries. With tracing off there is no span, and the message
// carries the client's own traceparent, rewritten in canonical form so that
// nothing but a well-formed value reaches a NATS header.
func (p *publisher) startPublish(c *Conn, req *protocol.Request, subject string) (trace.Span, traceHeaders) {
	ctx := clientTrace(context.Background(), req)
	if p.tracer == nil {
		var tc traceHeaders
		tc.parent, tc.state = tracing.Format(trace.SpanContextFromContext(ctx))
		return nil, tc
	}
	attrs := append(tracing.Message(subject, tracing.OpPublish, 0), tracing.AttrUser.String(c.ident.User))
	if req.MsgID != "" {
		attrs = append(attrs, semconv.MessagingMessageID(req.MsgID))
	}
	_, span := p.tracer.Start(ctx, tracing.SpanPublish, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(attrs...))
	var tc traceHeaders
	tc.parent, tc.state = tracing.Format(span.SpanContext())
	return span, tc
}

// endPublish ends a pub's span with the stream's answer.
func endPublish(span trace.Span, seq uint64, dup bool, err error) {
	if err != nil {
		failSpan(span, err)
	} else {
		span.SetAttributes(tracing.AttrSeq.Int64(int64(seq)), tracing.AttrDuplicate.Bool(dup))
	}
	span.End()
}

// deliverTraced is the live path for a message when the edge traces: a
// message that carries a trace gets one deliver span, around the hand-over
// to the room (which fans it out to every local subscriber, or holds it
// while a gap is repaired), so an edge shows once per message whatever its
// number of subscribers. A message without a trace (a backend's, say) gets
// no span: the edge continues traces, it starts none per delivery.
func (b *natsBackend) deliverTraced(m *nats.Msg, t target, deliver func(Delivery)) {
	ctx := tracing.FromHeader(context.Background(), m.Header)
	if !trace.SpanContextFromContext(ctx).IsValid() {
		if d, ok := b.decodeLive(ctx, m, t); ok {
			deliver(d)
		}
		return
	}
	ctx, span := b.tracer.Start(ctx, tracing.SpanDeliver, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(tracing.Message(m.Subject, tracing.OpDeliver, 0)...))
	defer span.End()
	d, ok := b.decodeLive(ctx, m, t)
	if !ok {
		span.SetStatus(codes.Error, "undecodable live message dropped")
		return
	}
	span.SetAttributes(tracing.AttrSeq.Int64(int64(d.Seq)))
	deliver(d)
}

// startSpan begins a span of the edge's own for a request: nothing but the
// client's trace (or none) in ctx when tracing is off, so the caller ends
// whatever it gets back without checking.
func (e *Edge) startSpan(ctx context.Context, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if e.tracer == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	return e.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
}

// failSpan marks span failed with err's protocol code.
func failSpan(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, string(protocol.ErrorReply(0, err).Error.Code))
}
