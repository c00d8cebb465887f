package config

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// ErrUsage marks a command line that cannot work: the binary exits 2.
var ErrUsage = errors.New("usage")

// Subcommand reports whether args start with the subcommand name (the
// edge's and the archiver's "provision") and returns the arguments after it.
func Subcommand(args []string, name string) (bool, []string) {
	if len(args) > 0 && args[0] == name {
		return true, args[1:]
	}
	return false, args
}

// Main runs a binary's run with its arguments and environment and a context
// cancelled by SIGINT or SIGTERM (which start its drain). An error is printed
// as "name: error" with exit status 1, or 2 when it is ErrUsage or one of
// usageErrs (a configuration that cannot work); -h exits 0.
func Main(name string, run func(ctx context.Context, args []string, getenv func(string) string) error, usageErrs ...error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	for _, u := range append(usageErrs, ErrUsage) {
		if errors.Is(err, u) {
			os.Exit(2)
		}
	}
	os.Exit(1)
}
