// Exit statuses and the IsolationInfo of a run: how a command's end becomes netmutex's
// status, and what the server is told about this run.

package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/netmutex/netmutex"
)

// exitStatus is a shell's $? for a process that ended with ps.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func describe(ps *os.ProcessState) string {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("killed by signal %d (%v)", int(ws.Signal()), ws.Signal())
	}
	return "exit status " + strconv.Itoa(ps.ExitCode())
}

// signalStatus is 128+N for signal N, as shells report a death by it.
func signalStatus(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 128
}

// isolationInfo is what the server's isolation command gets should it isolate this
// client: the host name first, as examples/isolate/isolate.sh expects it.
func isolationInfo(rawArgs []string) string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	info := fmt.Sprintf("Hostname: %s\nPid: %d\nCommand: netmutex run %s", host, os.Getpid(), quoteArgs(rawArgs))
	return truncateUTF8(info, netmutex.MaxIsolationInfo)
}

// quoteArgs joins args as a shell would read them back, quoting those that need it.
func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r))
		}) < 0 {
			q[i] = a
		} else {
			q[i] = strconv.Quote(a)
		}
	}
	return strings.Join(q, " ")
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for i := 1; i < utf8.UTFMax && len(s) > 0; i++ {
		if r, size := utf8.DecodeLastRuneInString(s); r != utf8.RuneError || size > 1 {
			break
		}
		s = s[:len(s)-1]
	}
	return s
}
