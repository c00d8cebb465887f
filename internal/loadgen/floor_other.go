//go:build !linux

package loadgen

import (
	"context"
	"errors"
)

// Floor needs epoll and raw sockets; it is measured on Linux only.
func Floor(ctx context.Context, spec FloorSpec) (*FloorResult, error) {
	return nil, errors.New("loadgen floor runs on Linux only")
}
