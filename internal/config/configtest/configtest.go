// Package configtest runs a binary's real main in a child process, so a
// test sees what a user sees: the exit status and every byte written to
// stdout and stderr.
//
// The child is the test binary itself: the binary's TestMain calls
// MaybeMain(main) first, which runs main instead of the tests when the
// process was started by Run.
package configtest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const childEnv = "PARLEY_CONFIGTEST_RUN_MAIN"

// MaybeMain runs main and exits when this process is a child started by
// Run; otherwise it returns at once.
func MaybeMain(main func()) {
	if os.Getenv(childEnv) != "1" {
		return
	}
	main()
	os.Exit(0)
}

// Result is how a run of main ended.
type Result struct {
	Code           int
	Stdout, Stderr string
}

// Run runs main with args and an environment of only env (plus PATH and
// HOME): no PARLEY_* variable of the developer's leaks in. A run that does
// not end within 30 s is killed and fails the test.
func Run(t *testing.T, args []string, env map[string]string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = []string{childEnv + "=1", "PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%q did not end within 30s; stderr:\n%s", args, stderr.String())
	case errors.As(err, &exit):
	case err != nil:
		t.Fatalf("run %q: %v", args, err)
	}
	return Result{Code: cmd.ProcessState.ExitCode(), Stdout: stdout.String(), Stderr: stderr.String()}
}

// Case is one command line that must be refused as a usage error.
type Case struct {
	Name string            // the invalid class, e.g. "negative"
	Args []string          // command line
	Env  map[string]string // PARLEY_* variables
	// Want are strings the error line must contain: the flag (or flags)
	// it is about, spelled --flag, or the variable.
	Want []string
}

// CheckUsageErrors runs every case and checks that main exits 2 with one
// line on stderr, "<name>: …", containing every Want, and nothing on
// stdout.
func CheckUsageErrors(t *testing.T, name string, cases []Case) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.Name+"/"+strings.Join(c.Args, " "), func(t *testing.T) {
			r := Run(t, c.Args, c.Env)
			line := strings.TrimSuffix(r.Stderr, "\n")
			if r.Code != 2 || strings.Contains(line, "\n") || r.Stdout != "" || !strings.HasPrefix(line, name+": ") {
				t.Fatalf("exit %d, want 2 and one line %q on stderr; stdout %q, stderr:\n%s", r.Code, name+": …", r.Stdout, r.Stderr)
			}
			for _, w := range c.Want {
				if !strings.Contains(line, w) {
					t.Errorf("the error does not name %s: %s", w, line)
				}
			}
		})
	}
}
