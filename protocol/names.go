package protocol

import (
	"fmt"
	"unicode/utf8"
)

// MaxNameLen bounds room and user names.
const MaxNameLen = 128

// MaxMsgIDLen bounds client-chosen message ids.
const MaxMsgIDLen = 64

// ValidName reports whether s may be a room or user name: 1 to 128 of
// [A-Za-z0-9_-]. Such a name is always a single safe NATS subject token: it
// can never contain '.', '*', '>', whitespace or control characters.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// CheckName returns a bad_request error naming what is wrong with a name.
// kind is the field's name, a constant of the caller's: it goes into the
// message as it is, while s is quoted.
func CheckName(kind, s string) error {
	if ValidName(s) {
		return nil
	}
	if s == "" {
		return fmt.Errorf("%w: %s is required", ErrBadRequest, kind)
	}
	return fmt.Errorf("%w: %s %q is not 1-%d characters of [A-Za-z0-9_-]", ErrBadRequest, kind, truncate(s, 40), MaxNameLen)
}

// CheckMsgID validates a client-chosen msg_id: 1 to 64 bytes of printable,
// non-space ASCII. It is part of the JetStream dedup key, so it is kept to
// characters that survive every header and log unchanged.
func CheckMsgID(s string) error {
	if len(s) == 0 || len(s) > MaxMsgIDLen {
		return fmt.Errorf("%w: msg_id must be 1-%d characters", ErrBadRequest, MaxMsgIDLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return fmt.Errorf("%w: msg_id may hold only printable ASCII without spaces", ErrBadRequest)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary so the error message stays valid UTF-8.
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
