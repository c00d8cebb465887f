package tracing

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	pjs "github.com/parley-mesh/parley/jetstream"
)

// Span names (docs/tracing.md). A message's trace is the publish, then a
// deliver per edge that has local subscribers of its topic, an archive per
// archiver that stores it; presence queries are a client and a server span.
const (
	// SpanPublish: the edge, from a client's pub until the stream's ack
	// (producer). Its context is what the NATS message carries.
	SpanPublish = "parley.publish"
	// SpanDeliver: an edge hands one live message to its local
	// subscribers of the topic (consumer), once per message per edge,
	// whatever the number of subscribers.
	SpanDeliver = "parley.deliver"
	// SpanArchive: an archiver stores one message, from its fetch until
	// the ack after the commit (consumer).
	SpanArchive = "parley.archive"
	// SpanPresenceQuery: the edge asking presence who is in a room
	// (client), and the presence worker answering (server).
	SpanPresenceQuery = "parley.presence.query"
)

// Attribute keys of Parley's own; the messaging.* ones are OpenTelemetry's
// semantic conventions.
const (
	// AttrRoom is the room of a room message or query.
	AttrRoom = attribute.Key("parley.room")
	// AttrTo is the recipient of a direct message.
	AttrTo = attribute.Key("parley.to")
	// AttrSeq is the message's stream sequence: the seq clients see.
	AttrSeq = attribute.Key("parley.seq")
	// AttrUser is the publisher (the token's sub) on the edge's spans.
	AttrUser = attribute.Key("parley.user")
	// AttrDuplicate: the stream acked the publish as a retry of a message
	// it already stored (nothing stored, nothing delivered).
	AttrDuplicate = attribute.Key("parley.duplicate")
	// AttrUsers is how many users a presence answer lists.
	AttrUsers = attribute.Key("parley.users")
)

// Operation names (messaging.operation.name).
const (
	OpPublish = "publish"
	OpDeliver = "deliver"
	OpArchive = "archive"
)

// SystemNATS is messaging.system: the conventions name no constant for NATS.
var SystemNATS = semconv.MessagingSystemKey.String("nats")

// Message is the attributes of a span about one message on subject (a chat
// subject, or its parley.live. republish): the messaging system, the
// destination, the room or recipient it names, and the operation.
func Message(subject string, op string, seq uint64) []attribute.KeyValue {
	kv := make([]attribute.KeyValue, 0, 6)
	kv = append(kv, SystemNATS, semconv.MessagingDestinationName(subject), semconv.MessagingOperationName(op))
	switch op {
	case OpPublish:
		kv = append(kv, semconv.MessagingOperationTypeSend)
	default:
		kv = append(kv, semconv.MessagingOperationTypeProcess)
	}
	topic := strings.TrimPrefix(subject, pjs.LivePrefix)
	switch {
	case strings.HasPrefix(topic, pjs.RoomPrefix):
		kv = append(kv, AttrRoom.String(topic[len(pjs.RoomPrefix):]))
	case strings.HasPrefix(topic, pjs.DMPrefix):
		kv = append(kv, AttrTo.String(topic[len(pjs.DMPrefix):]))
	}
	if seq != 0 {
		kv = append(kv, AttrSeq.Int64(int64(seq)))
	}
	return kv
}

// Header is a NATS message's headers as a propagation carrier.
type Header nats.Header

func (h Header) Get(key string) string { return nats.Header(h).Get(key) }

func (h Header) Set(key, value string) { nats.Header(h).Set(key, value) }

func (h Header) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// FromHeader is ctx continuing the trace h carries (ctx itself when h
// carries none, or an invalid one).
func FromHeader(ctx context.Context, h nats.Header) context.Context {
	if h.Get(HeaderTraceparent) == "" {
		return ctx
	}
	return Propagator.Extract(ctx, Header(h))
}

// Inject writes ctx's span context into h (which must not be nil); nothing
// when ctx has none.
func Inject(ctx context.Context, h nats.Header) {
	Propagator.Inject(ctx, Header(h))
}
