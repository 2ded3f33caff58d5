//go:build unix

package main

import (
	"os"
	"syscall"
)

// signalGroup sends sig to every process of the process group pgid; a group already
// gone is no error.
func signalGroup(pgid int, sig os.Signal) {
	if s, ok := sig.(syscall.Signal); ok {
		syscall.Kill(-pgid, s)
	}
}
