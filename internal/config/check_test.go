package config_test

import (
	"slices"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/config"
)

// A component Config's zero or negative size or duration takes the
// default; anything else is kept.
func TestDefault(t *testing.T) {
	for _, c := range []struct{ v, want time.Duration }{{0, time.Second}, {-1, time.Second}, {3 * time.Millisecond, 3 * time.Millisecond}} {
		v := c.v
		config.Default(&v, time.Second)
		if v != c.want {
			t.Errorf("Default(%v, 1s) = %v, want %v", c.v, v, c.want)
		}
	}
	n := 0
	config.Default(&n, 7)
	if n != 7 {
		t.Errorf("Default(0, 7) = %d", n)
	}
}

func TestSubcommand(t *testing.T) {
	for _, c := range []struct {
		args []string
		is   bool
		rest []string
	}{
		{[]string{"provision", "--nats", "x"}, true, []string{"--nats", "x"}},
		{[]string{"--nats", "x", "provision"}, false, []string{"--nats", "x", "provision"}},
		{nil, false, nil},
	} {
		is, rest := config.Subcommand(c.args, "provision")
		if is != c.is || !slices.Equal(rest, c.rest) {
			t.Errorf("Subcommand(%q) = %v %q, want %v %q", c.args, is, rest, c.is, c.rest)
		}
	}
}
