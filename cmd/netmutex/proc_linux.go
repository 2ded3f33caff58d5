package main

import "syscall"

// groupAttr puts COMMAND in a process group of its own, and has the kernel kill it
// should netmutex die first.
func groupAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
