package config

import (
	"log/slog"
	"os"
)

// NewLogger builds the components' structured logger from --log-level
// (debug, info, warn, error) and --log-format (json or text), on stderr. A
// bad value is a usage error.
func NewLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, Usagef("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	}
	return nil, Usagef("--log-format must be json or text, not %q", format)
}
