package config

import (
	"errors"
	"flag"
	"math"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func testFlags() (*Flags, *time.Duration, *int, *bool, *strings.Builder) {
	f := NewFlags("tool", "Usage:\n  tool [flags]")
	var help strings.Builder
	f.Help = &help
	d := f.Duration("read-timeout", time.Minute, "silence allowed")
	n := f.Int("max-frame-bytes", 64, "frame bound")
	b := f.Bool("insecure", false, "no tokens")
	return f, d, n, b, &help
}

func TestParsePrecedence(t *testing.T) {
	f, d, n, b, _ := testFlags()
	err := f.Parse([]string{"--read-timeout", "5s", "--insecure"}, env(map[string]string{
		"PARLEY_READ_TIMEOUT": "9s", "PARLEY_MAX_FRAME_BYTES": "128",
	}))
	if err != nil || *d != 5*time.Second || *n != 128 || !*b {
		t.Fatalf("err %v, read-timeout %v, max-frame-bytes %d, insecure %v", err, *d, *n, *b)
	}
}

// Bad command lines are one-line usage errors naming the flag as --flag;
// nothing is printed (the flag package would print the whole usage).
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--read-timeout", "60"}, nil, `--read-timeout "60": needs a duration with a unit`},
		{[]string{"-read-timeout=1x"}, nil, `--read-timeout "1x": needs a duration`},
		{[]string{"--max-frame-bytes", "1k"}, nil, `--max-frame-bytes "1k": needs an integer`},
		{[]string{"--insecure=perhaps"}, nil, `--insecure "perhaps": takes true or false`},
		{[]string{"--nope"}, nil, "flag provided but not defined: --nope (tool --help lists the flags)"},
		{[]string{"--read-timeout"}, nil, "flag needs an argument: --read-timeout (tool --help"},
		{[]string{"extra"}, nil, `unexpected argument "extra"`},
		{nil, map[string]string{"PARLEY_READ_TIMEOUT": "60"}, `PARLEY_READ_TIMEOUT="60": --read-timeout needs a duration`},
	} {
		f, _, _, _, help := testFlags()
		err := f.Parse(tc.args, env(tc.env))
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q %v: got %v, want a one-line usage error with %q", tc.args, tc.env, err, tc.want)
		}
		if strings.HasPrefix(err.Error(), "usage") || help.Len() > 0 {
			t.Errorf("%q: message %q, printed %q", tc.args, err, help.String())
		}
	}
}

func TestHelp(t *testing.T) {
	f, _, _, _, help := testFlags()
	if err := f.Parse([]string{"--help"}, env(nil)); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("got %v, want flag.ErrHelp", err)
	}
	// The types come from the flags' own values: Parse unwrapped them.
	for _, w := range []string{"Usage:\n  tool [flags]\n", "PARLEY_LOG_LEVEL", "-read-timeout duration", "(default 1m0s)", "-max-frame-bytes int", "  -insecure\n"} {
		if !strings.Contains(help.String(), w) {
			t.Errorf("help lacks %q:\n%s", w, help.String())
		}
	}
}

func TestChecks(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string // "" for no error
	}{
		{Positive("max-frame-bytes", -5), "--max-frame-bytes must be above 0, not -5"},
		{Positive("read-timeout", time.Duration(0)), "--read-timeout must be above 0, not 0s"},
		{Positive("request-rate", 0.5), ""},
		{Positive("request-rate", math.NaN()), "--request-rate must be a finite number"},
		{NotNegative("max-connections", -1, "unlimited"), "--max-connections must be 0 (unlimited) or more, not -1"},
		{NotNegative("room-cache", 0, "none"), ""},
		{InRange("stream-replicas", 6, 1, 5), "--stream-replicas must be 1 to 5, not 6"},
		{HostPort("listen", ":8080"), ""},
		{HostPort("listen", "[::1]:0"), ""},
		{HostPort("listen", "8080"), `--listen "8080": want host:port`},
		{HostPort("listen", "h:http"), `the port must be a number`},
		{NATSURLs("nats", "nats://a:4222, tls://b:4222,c:4222,wss://d"), ""},
		{NATSURLs("nats", "http://a:4222"), "--nats \"http://a:4222\": the scheme must be"},
		{NATSURLs("nats", "nats://a:4222,,nats://b"), "an empty URL"},
		{NATSURLs("nats", "nats://:4222"), "no host"},
		{NATS{TLSCert: "/dev/null"}.Check(), "--nats-tls-cert and --nats-tls-key go together"},
		{NATS{Creds: "/nonexistent/x.creds"}.Check(), "--nats-creds: stat /nonexistent/x.creds"},
		{First(nil, Usagef("first"), Usagef("second")), "first"},
	} {
		switch {
		case tc.want == "" && tc.err != nil:
			t.Errorf("unexpected %v", tc.err)
		case tc.want != "" && (!errors.Is(tc.err, ErrUsage) || !strings.Contains(tc.err.Error(), tc.want)):
			t.Errorf("got %v, want a usage error with %q", tc.err, tc.want)
		}
	}
}

// A usage error keeps what it wraps, and Main's exit status rule sees it.
func TestUsagefWraps(t *testing.T) {
	base := errors.New("base")
	err := Usagef("--x: %w", base)
	if !errors.Is(err, ErrUsage) || !errors.Is(err, base) || err.Error() != "--x: base" {
		t.Fatalf("%v", err)
	}
}
