//go:build !unix

package main

import (
	"context"
	"errors"
)

// chaos needs Unix signals (SIGKILL, SIGSTOP) to inject its faults.
func chaos(context.Context, []string) error {
	return errors.New("loadgen chaos runs on Unix systems only")
}
