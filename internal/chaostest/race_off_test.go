//go:build unix && !race

package chaostest

const raceEnabled = false
