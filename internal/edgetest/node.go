package edgetest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Node.js side of tests that run a JavaScript SDK (the TypeScript SDK,
// centrifuge-js) against edges a Go test started. Outside CI a missing tool
// skips the test, saying how to get it; in CI (CI=true) it fails, since
// .ci/run installs them and a skip there would hide that the tests never
// ran.

// Need skips the test, or fails it under CI=true, because what is missing.
func Need(t testing.TB, what, howTo string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing, and CI must run this test: %s", what, howTo)
	}
	t.Skipf("%s is missing: %s, then run this test again", what, howTo)
}

// NodeDir is dir (relative to the test's package) as an absolute path,
// once the package its node_modules must hold (probe, such as "typescript")
// is installed: npm ci in dir, which .ci/run does.
func NodeDir(t testing.TB, dir, probe string) string {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(abs, "node_modules", probe, "package.json")); err != nil {
		Need(t, filepath.ToSlash(filepath.Join(dir, "node_modules", probe)), "run npm ci in "+abs+" (.ci/run does)")
	}
	return abs
}

// NodeBin is Node.js, 20 or newer.
func NodeBin(t testing.TB) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		Need(t, "node", "install Node.js 20 or newer")
		return ""
	}
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Fatalf("node --version: %v", err)
	}
	version := strings.TrimSpace(string(out))
	major, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(version, ".", 2)[0], "v"))
	if major < 20 {
		Need(t, "node 20 or newer (found "+version+")", "install Node.js 20 or newer")
	}
	return node
}

var nodeSummary = regexp.MustCompile(`(?m)^ℹ (tests|pass|fail|skipped|todo|cancelled) (\d+)$`)

// RunNodeTests runs test files of dir (see NodeDir) with Node's test
// runner, one file at a time, env added to the environment, and fails
// unless every test ran and passed: a run that counted no test, or skipped
// one, is a failure too (a JavaScript test that silently did nothing must
// not pass the Go test).
func RunNodeTests(t testing.TB, dir string, timeout time.Duration, env []string, files ...string) {
	t.Helper()
	node := NodeBin(t)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	args := append([]string{"--test", "--test-reporter=spec", "--test-concurrency=1"}, files...)
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("node %s (%v):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("node tests failed: %v", err)
	}
	counts := map[string]int{}
	for _, s := range nodeSummary.FindAllStringSubmatch(string(out), -1) {
		counts[s[1]], _ = strconv.Atoi(s[2])
	}
	if counts["tests"] == 0 || counts["pass"] != counts["tests"] || counts["fail"]+counts["skipped"]+counts["todo"]+counts["cancelled"] > 0 {
		t.Fatalf("node tests: %v; every test must run and pass", counts)
	}
}
