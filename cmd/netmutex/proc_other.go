//go:build !unix

package main

import (
	"os"
	"syscall"
)

// Without process groups, only COMMAND itself is signalled; SIGTERM is a kill.

func groupAttr() *syscall.SysProcAttr { return nil }

func signalGroup(pid int, sig os.Signal) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Signal(sig)
	}
}
