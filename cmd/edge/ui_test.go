package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/parley-mesh/parley/internal/config"
)

// --ui defaults to on in the dev mesh and off with --nats; given (flag or
// PARLEY_UI) it wins either way, and a value that is no bool is refused.
func TestUIFlag(t *testing.T) {
	nats := []string{"--nats", "nats://127.0.0.1:4222", "--insecure"}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want bool
	}{
		{nil, nil, true},
		{[]string{"--ui=false"}, nil, false},
		{nil, map[string]string{"PARLEY_UI": "false"}, false},
		{nats, nil, false},
		{append([]string{"--ui"}, nats...), nil, true},
		{nats, map[string]string{"PARLEY_UI": "true"}, true},
		{append([]string{"--ui=false"}, nats...), map[string]string{"PARLEY_UI": "true"}, false},
	} {
		o, err := parse(tc.args, env(tc.env), false)
		if err != nil {
			t.Fatalf("%q %v: %v", tc.args, tc.env, err)
		}
		if o.uiOn() != tc.want {
			t.Errorf("%q %v: chat page on = %v, want %v", tc.args, tc.env, o.uiOn(), tc.want)
		}
		var b bytes.Buffer
		o.banner(&b, "data/nats", "127.0.0.1:4222")
		if got := strings.Contains(b.String(), "Chat page:  http://127.0.0.1:8080/"); got != tc.want {
			t.Errorf("%q %v: banner names the chat page: %v, want %v:\n%s", tc.args, tc.env, got, tc.want, b.String())
		}
	}
	if _, err := parse([]string{"--ui=maybe"}, env(nil), false); !errors.Is(err, config.ErrUsage) || !strings.Contains(err.Error(), "--ui") {
		t.Errorf("--ui=maybe: %v, want a usage error naming --ui", err)
	}
	if _, err := parse(nil, env(map[string]string{"PARLEY_UI": "yes please"}), false); !errors.Is(err, config.ErrUsage) {
		t.Errorf("PARLEY_UI=yes please: %v, want a usage error", err)
	}
}

// `go run ./cmd/edge` serves the chat page and the SDK it loads, same
// origin as /ws; --ui=false takes the page away.
func TestDevMeshServesTheChatPage(t *testing.T) {
	for _, on := range []bool{true, false} {
		addr := freeAddr(t)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		args := []string{"--listen", addr, "--nats-listen", "127.0.0.1:0", "--data", t.TempDir(), "--log-level", "error", "--drain-timeout", "2s"}
		if !on {
			args = append(args, "--ui=false")
		}
		go func() { done <- runTo(ctx, args, env(nil), io.Discard) }()
		var page, sdk *http.Response
		deadline := time.Now().Add(30 * time.Second)
		for {
			var err error
			if page, err = http.Get("http://" + addr + "/"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the dev mesh never answered on %s: %v", addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		body, _ := io.ReadAll(page.Body)
		page.Body.Close()
		sdk, err := http.Get("http://" + addr + "/sdk/index.js")
		if err != nil {
			t.Fatal(err)
		}
		sdk.Body.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if on && (page.StatusCode != http.StatusOK || !strings.Contains(string(body), `<script type="module" src="app.js">`) || sdk.StatusCode != http.StatusOK) {
			t.Errorf("--ui on: GET / %d (%d bytes), GET /sdk/index.js %d", page.StatusCode, len(body), sdk.StatusCode)
		}
		if !on && (page.StatusCode != http.StatusNotFound || sdk.StatusCode != http.StatusNotFound) {
			t.Errorf("--ui=false: GET / %d, GET /sdk/index.js %d; want 404", page.StatusCode, sdk.StatusCode)
		}
	}
}
