package config

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Usagef returns a usage error: config.Main prints it as one line and exits
// 2. Unlike fmt.Errorf("%w: …", ErrUsage) its text does not start with
// "usage: ", so the line reads "edge: --max-frame-bytes must be …". A %w in
// format is unwrapped as usual.
func Usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

type usageError struct{ err error }

func (e *usageError) Error() string   { return e.err.Error() }
func (e *usageError) Unwrap() []error { return []error{ErrUsage, e.err} }

// First returns the first non-nil error: a binary lists its flag checks in
// flag order and reports the first failure.
func First(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

type number interface {
	~int | ~int32 | ~int64 | ~float64
}

// Default sets *v to def when it is zero or negative. Throughout Parley a
// component Config's zero value for a size, count or duration means "the
// default" (so a test or the dev mesh sets only what it cares about), and a
// negative one can only be a mistake the binaries' flag checks already
// refuse; every component fills its Config with this one rule.
func Default[T number](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Positive checks that flag name's value is above zero: for the sizes,
// rates and timeouts where 0 would otherwise silently mean the default.
func Positive[T number](name string, v T) error {
	if err := finite(name, v); err != nil {
		return err
	}
	if !(v > 0) {
		return Usagef("--%s must be above 0, not %v", name, v)
	}
	return nil
}

// NotNegative checks that flag name's value is 0 or more; zero says what 0
// means ("unlimited", "none"), for the message.
func NotNegative[T number](name string, v T, zero string) error {
	if err := finite(name, v); err != nil {
		return err
	}
	if !(v >= 0) {
		return Usagef("--%s must be 0 (%s) or more, not %v", name, zero, v)
	}
	return nil
}

// InRange checks lo <= v <= hi.
func InRange[T number](name string, v, lo, hi T) error {
	if err := finite(name, v); err != nil {
		return err
	}
	if !(v >= lo && v <= hi) {
		return Usagef("--%s must be %v to %v, not %v", name, lo, hi, v)
	}
	return nil
}

// finite refuses NaN and ±Inf, which strconv.ParseFloat (so --request-rate)
// accepts.
func finite[T number](name string, v T) error {
	if f := float64(v); math.IsNaN(f) || math.IsInf(f, 0) {
		return Usagef("--%s must be a finite number, not %v", name, v)
	}
	return nil
}

// HostPort checks a listen address: host:port with a numeric port, the
// host empty (every interface), a name or an IP address.
func HostPort(name, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return Usagef("--%s %q: want host:port, such as 127.0.0.1:8080 or :8080 (%w)", name, addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return Usagef("--%s %q: the port must be a number from 0 to 65535", name, addr)
	}
	return nil
}

// NATSURLs checks a comma-separated list of NATS server URLs as nats.go
// takes them: nats://, tls://, ws:// or wss:// URLs, or bare host:port.
func NATSURLs(name, urls string) error {
	for _, u := range strings.Split(urls, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			return Usagef("--%s %q: an empty URL in the list", name, urls)
		}
		if !strings.Contains(u, "://") {
			u = "nats://" + u
		}
		p, err := url.Parse(u)
		if err != nil {
			return Usagef("--%s: %w", name, err)
		}
		switch p.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return Usagef("--%s %q: the scheme must be nats://, tls://, ws:// or wss://", name, u)
		}
		if p.Hostname() == "" {
			return Usagef("--%s %q: no host", name, u)
		}
	}
	return nil
}
