package config

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/parley-mesh/parley/internal/tracing"
)

// The binaries' logger puts the span's trace_id on a line logged inside
// one, in both formats.
func TestNewLoggerCarriesTraceID(t *testing.T) {
	ctx := trace.ContextWithRemoteSpanContext(context.Background(),
		tracing.Parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""))
	for _, format := range []string{"json", "text"} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		stderr := os.Stderr
		os.Stderr = w // NewLogger writes to the os.Stderr of when it is called
		log, err := NewLogger("info", format)
		os.Stderr = stderr
		if err != nil {
			t.Fatal(err)
		}
		log.InfoContext(ctx, "inside")
		log.Info("outside")
		w.Close()
		var out bytes.Buffer
		if _, err := io.Copy(&out, r); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 2 || !strings.Contains(lines[0], "4bf92f3577b34da6a3ce929d0e0e4736") || !strings.Contains(lines[0], "trace_id") || strings.Contains(lines[1], "trace_id") {
			t.Errorf("%s: %q", format, lines)
		}
	}
}
