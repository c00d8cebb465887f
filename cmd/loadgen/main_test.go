package main

import (
	"context"
	"strings"
	"testing"
)

// Every flag of the load tool is checked before anything starts: a value
// that cannot work exits 2 with one line naming the flag, as the other
// binaries do.
func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		cmd  func(context.Context, []string) error
		args string
		want string
	}{
		{run, "--conns 0", "--conns"},
		{run, "--workers -1", "--workers"},
		{run, "--rate -1", "--rate"},
		{run, "--scenario pubsub --rate 0", "--rate 0"},
		{run, "--dial-concurrency -1", "--dial-concurrency"},
		{run, "--target bogus", "--target"},
		{run, "--target nats --scenario pubsub", "--target nats"},
		{run, "--target centrifugo --scenario reconnect", "--target centrifugo"},
		{run, "--scenario saturate --step-factor 1", "--step-factor"},
		{run, "--scenario saturate --step-add -5", "--step-add"},
		{run, "--scenario saturate --start-rate 0", "--start-rate"},
		{run, "--scenario saturate --max-steps 0", "--max-steps"},
		{run, "--scenario saturate --max-steps 101", "--max-steps"},
		{run, "--scenario saturate --step-duration 0s", "--step-duration"},
		{run, "--scenario saturate --p99-limit 0s", "--p99-limit"},
		{run, "--grace -1s", "--grace"},
		{run, "--target centrifugo --centrifugo-api ws://x", "--centrifugo-api"},
		{run, "--target nats --url http://127.0.0.1:8082", "--url"},
		{run, "--url http://127.0.0.1:8080/ws", "--url"},
		{run, "--nats bogus://x", "--nats"},
		{run, "--sources 300", "--sources"},
		{run, "--duration 0s", "--duration"},
		{run, "--backlog 10", "--backlog"},
		{run, "--scenario reconnect --backlog -1", "--backlog"},
		{run, "--msg-rate -1", "--msg-rate"},
		{run, "--nope", "not defined"},
		{run, "extra", "unexpected argument"},
		{floor, "--pairs 0", "--pairs"},
		{floor, "--duration -1s", "--duration"},
		{chaos, "--trials 0", "--trials"},
		{chaos, "--faults nope", "--faults"},
		{chaos, "--edges 0", "--edges"},
		{chaos, "--bench-conns 0", "--bench-conns"},
		{chaos, "--bench-replay --replay-small 100,2000", "--replay-small"},
		{chaos, "--bench-replay --replay-small 1x", "--replay-small"},
		{chaos, "--bench-replay --replay-long 500", "--replay-long"},
		{chaos, "--bench-replay --replay-long 200000", "--replay-long"},
		{chaos, "--bench-replay --replay-burst 1000", "--replay-burst"},
		{chaos, "--bench-replay --replay-max-recover 0", "--replay-max-recover"},
		{chaos, "--bench-replay --replay-messages 0", "--replay-messages"},
		{chaos, "--bench-replay --replay-clients -1", "--replay-clients"},
	} {
		err := tc.cmd(t.Context(), strings.Fields(tc.args))
		if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v (exit %d), want exit 2 naming %s", tc.args, err, exitCode(err), tc.want)
		}
	}
}
