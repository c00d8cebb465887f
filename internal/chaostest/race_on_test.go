//go:build unix && race

package chaostest

// raceEnabled: this test binary has the race detector, so TestChaos builds
// the edge and nats-server with it too (the packages are then already in
// the build cache, and an edge that races under faults dies loudly).
const raceEnabled = true
