// Package chaostest checks Parley's delivery guarantees under faults: a
// 3-node JetStream cluster with the R3 chat stream and several edges, all
// real processes on loopback; publishers that retry each msg_id until it is
// acked; subscribers that resume with since (raw WebSocket clients written
// from docs/protocol.md, and Go-client applications with WithReconnect);
// one fault per trial (edge SIGKILL or SIGTERM, NATS node SIGKILL or
// SIGSTOP, stream-leader step-down, an edge's NATS connection kicked); and
// a checker that compares what every client saw with what the stream holds.
//
// TestChaos runs a bounded number of trials (PARLEY_CHAOS_TRIALS, default
// 12); "go run ./cmd/loadgen chaos --trials N" runs as many as asked.
// docs/guarantees.md says what the trials prove and how they were run.
package chaostest
