package main

import (
	"fmt"
	"log/slog"

	"github.com/parley-mesh/parley/internal/webui"
)

// uiOn says whether the edge serves the chat page: --ui as given, else on
// in the dev mesh (no --nats), where it is the ten-second way to see the
// mesh work, and off in production, where an operator opts in.
func (o *options) uiOn() bool {
	if o.uiGiven {
		return o.ui
	}
	return o.nats.URLs == ""
}

// mountUI puts the chat page on the edge's config when it is on.
func (o *options) mountUI(log *slog.Logger) error {
	if !o.uiOn() {
		return nil
	}
	h, err := webui.Handler(webui.Options{Insecure: o.edge.Insecure})
	if err != nil {
		return fmt.Errorf("--ui: %w", err)
	}
	o.edge.UI = h
	log.Info("serving the chat page at /", "insecure", o.edge.Insecure)
	return nil
}

// pageLine is the dev banner's line for the chat page at base ("" when off).
func (o *options) pageLine(base string) string {
	if !o.uiOn() {
		return ""
	}
	return fmt.Sprintf("  Chat page:  %s/   (open it in a browser)\n", base)
}
