package protocol

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzNames holds the name and msg_id checks to their promises: an accepted
// room or user name is one safe NATS subject token within its bounds, an
// accepted msg_id is within its bounds, every rejection is a bad_request, and
// every error message is valid UTF-8 (it goes into a reply).
func FuzzNames(f *testing.F) {
	for _, seed := range []string{
		"", "lobby", "a.b", "a*", ">", "a b", "a\tb", "a\x00b", "a\x7fb", "caf\xc3\xa9", "caf\xc3",
		"\xff", "a\u2028b", "ａ", strings.Repeat("a", MaxNameLen), strings.Repeat("a", MaxNameLen+1),
		strings.Repeat("é", 30), strings.Repeat("\x80", 50), "c-9", "~!\"#$%&'()", strings.Repeat("m", MaxMsgIDLen+1),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		valid := ValidName(s)
		if valid {
			if len(s) < 1 || len(s) > MaxNameLen || !utf8.ValidString(s) || strings.ContainsAny(s, ".*>") {
				t.Fatalf("ValidName(%q) accepted a name out of bounds, invalid UTF-8 or with . * >", s)
			}
			for _, r := range s {
				if unicode.IsSpace(r) || unicode.IsControl(r) || r >= utf8.RuneSelf {
					t.Fatalf("ValidName(%q) accepted %U", s, r)
				}
			}
		}
		// kind is the caller's field name, a constant ("room", "to"), not
		// input: it is not fuzzed.
		for _, kind := range []string{"room", "to"} {
			err := CheckName(kind, s)
			if (err == nil) != valid {
				t.Fatalf("CheckName(%q) = %v, ValidName %t", s, err, valid)
			}
			checkRejection(t, "CheckName", s, err)
		}

		err := CheckMsgID(s)
		if err == nil {
			if len(s) < 1 || len(s) > MaxMsgIDLen {
				t.Fatalf("CheckMsgID(%q) accepted %d bytes", s, len(s))
			}
			for i := 0; i < len(s); i++ {
				if s[i] <= ' ' || s[i] > '~' {
					t.Fatalf("CheckMsgID(%q) accepted byte %#x", s, s[i])
				}
			}
		}
		checkRejection(t, "CheckMsgID", s, err)
	})
}

func checkRejection(t *testing.T, fn, s string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if !errors.Is(err, ErrBadRequest) {
		t.Fatalf("%s(%q) = %v, not a bad_request", fn, s, err)
	}
	if !utf8.ValidString(err.Error()) {
		t.Fatalf("%s(%q): error %q is not valid UTF-8", fn, s, err)
	}
}
