//go:build unix && !linux

package chaostest

import "syscall"

// childAttr puts a child in its own process group. Outside Linux there is
// no parent-death signal: only Mesh.Close stops the children.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
