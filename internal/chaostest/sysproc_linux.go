package chaostest

import "syscall"

// childAttr puts a child in its own process group and has the kernel
// SIGKILL it if the test process dies first (t.Cleanup never runs then).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
