package config

import (
	"flag"
	"log/slog"
	"os"

	"github.com/parley-mesh/parley/internal/tracing"
)

// NewLogger builds the components' structured logger from --log-level
// (debug, info, warn, error) and --log-format (json or text), on stderr. A
// bad value is a usage error. Lines logged inside a span carry its trace_id
// and span_id (tracing.LogHandler).
func NewLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, Usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(tracing.LogHandler(slog.NewJSONHandler(os.Stderr, opts))), nil
	case "text":
		return slog.New(tracing.LogHandler(slog.NewTextHandler(os.Stderr, opts))), nil
	}
	return nil, Usagef("--log-format must be json or text, not %q", format)
}

// Log is the logging flags every binary takes.
type Log struct {
	Level, Format string
}

// Register adds --log-level and --log-format to fs.
func (l *Log) Register(fs *flag.FlagSet) {
	fs.StringVar(&l.Level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&l.Format, "log-format", "json", "json or text")
}

// SetLogger sets *dst to the logger the flags ask for (NewLogger). It is one
// of a binary's flag checks (an argument of First), so a bad --log-level or
// --log-format is reported in flag order with the others, and the config
// parse returns holds the logger the binary runs with.
func (l Log) SetLogger(dst **slog.Logger) error {
	log, err := NewLogger(l.Level, l.Format)
	if err != nil {
		return err
	}
	*dst = log
	return nil
}
