package archive

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/tracing"
	pjs "github.com/parley-mesh/parley/jetstream"
)

// batchSpans are the archive spans of one fetched batch, index-aligned with
// its messages: one per message that carries a trace (the publisher's
// traceparent header, stored with it), none for the others, so the
// archiver continues traces and starts none of its own. Each lasts from the
// fetch to the ack after the commit, retries of a failing store included:
// that is when the message became history. nil when tracing is off.
type batchSpans []archiveSpan

type archiveSpan struct {
	seq  uint64
	ctx  context.Context // the span's, for log lines about this message
	span trace.Span      // nil: untraced, or ended
}

func (a *Archiver) startSpans(msgs []jetstream.Msg) batchSpans {
	if a.tracer == nil {
		return nil
	}
	spans := make(batchSpans, len(msgs))
	for i, m := range msgs {
		ctx := tracing.FromHeader(context.Background(), m.Headers())
		if !trace.SpanContextFromContext(ctx).IsValid() {
			continue
		}
		var seq uint64
		if md, err := m.Metadata(); err == nil {
			seq = md.Sequence.Stream
		}
		attrs := append(tracing.Message(m.Subject(), tracing.OpArchive, seq),
			semconv.MessagingConsumerGroupName(pjs.ArchiveConsumer), semconv.MessagingBatchMessageCount(len(msgs)))
		ctx, span := a.tracer.Start(ctx, tracing.SpanArchive, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
		spans[i] = archiveSpan{seq: seq, ctx: ctx, span: span}
	}
	return spans
}

// ctx is the context for a log line about message i (-1: none of the
// batch's traced messages).
func (s batchSpans) ctx(i int) context.Context {
	if i < 0 || i >= len(s) || s[i].span == nil {
		return context.Background()
	}
	return s[i].ctx
}

// seqCtx is ctx for the message with stream sequence seq.
func (s batchSpans) seqCtx(seq uint64) context.Context {
	return s.ctx(s.index(seq))
}

func (s batchSpans) index(seq uint64) int {
	for i := range s {
		if s[i].seq == seq && s[i].span != nil {
			return i
		}
	}
	return -1
}

// fail ends message i's span as failed (not archived, for why).
func (s batchSpans) fail(i int, why string) {
	if i < 0 || i >= len(s) || s[i].span == nil {
		return
	}
	s[i].span.SetStatus(codes.Error, why)
	s[i].span.End()
	s[i].span = nil
}

// end ends every span still open: failed for why, or stored when why is "".
func (s batchSpans) end(why string) {
	for i := range s {
		if s[i].span == nil {
			continue
		}
		if why != "" {
			s[i].span.SetStatus(codes.Error, why)
		}
		s[i].span.End()
		s[i].span = nil
	}
}
