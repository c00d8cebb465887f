//go:build unix

package chaostest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// proc is one child process (a nats-server or an edge) that faults kill,
// stop and restart. It is always the same command line, so a restart is the
// same node coming back on the same ports and the same data directory.
// Output of every incarnation is appended to one log file.
type proc struct {
	name string
	path string
	args []string
	log  string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the current incarnation has exited
	exitErr error
	paused  bool // SIGSTOPped
	starts  int
	// expectExit is set when we sent a signal that ends the process;
	// crashes counts the exits nobody asked for (a panic, a fatal error).
	expectExit bool
	crashes    int
}

// The signals faults send.
const (
	sigKill = syscall.SIGKILL
	sigTerm = syscall.SIGTERM
	sigStop = syscall.SIGSTOP
	sigCont = syscall.SIGCONT
)

func newProc(name, path, log string, args ...string) *proc {
	return &proc{name: name, path: path, args: args, log: log}
}

// start runs a new incarnation; the previous one must have exited.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.exited:
		default:
			return fmt.Errorf("%s: still running (pid %d)", p.name, p.cmd.Process.Pid)
		}
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(f, "=== chaostest: start #%d of %s at %s\n", p.starts, p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), "GOTRACEBACK=all")
	// Our own process group, so a signal meant for the child never reaches
	// us, and (Linux) SIGKILL when we die, so a crashed or killed test
	// leaves no servers behind.
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", p.name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited, p.paused, p.exitErr, p.expectExit = cmd, exited, false, nil, false
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.exitErr = err
		if !p.expectExit {
			p.crashes++
		}
		p.mu.Unlock()
		close(exited)
	}()
	return nil
}

// running reports whether the current incarnation is alive (paused counts).
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// signal sends sig to the current incarnation; a process that already
// exited is not an error.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	switch sig {
	case syscall.SIGKILL, syscall.SIGTERM:
		p.expectExit = true
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT:
		p.paused = false
	}
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-exited:
		return nil
	default:
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: %v: %w", p.name, sig, err)
	}
	return nil
}

// wait waits for the current incarnation to exit.
func (p *proc) wait(ctx context.Context) error {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited == nil {
		return nil
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s did not exit: %w", p.name, ctx.Err())
	}
}

// kill SIGKILLs the current incarnation and waits for it to be gone. A
// paused process dies of SIGKILL too.
func (p *proc) kill() {
	_ = p.signal(sigKill)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.wait(ctx)
}

// takeCrashes returns the exits nobody asked for since the last call, and
// how the last incarnation ended.
func (p *proc) takeCrashes() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.crashes
	p.crashes = 0
	return n, p.exitErr
}

// isPaused reports whether the process was SIGSTOPped and not resumed.
func (p *proc) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// freePort returns a loopback port nobody listens on right now. Another
// process may take it before we bind it; the window is small and a failed
// start says so.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
