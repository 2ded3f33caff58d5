package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/server"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// helperEnv makes the test binary act as a COMMAND for netmutex run (helperMain).
const helperEnv = "NETMUTEX_TEST_HELPER"

// netmutexBin is the netmutex binary of this tree, built once in TestMain.
var netmutexBin string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain(os.Args[1:]))
	}
	dir, err := os.MkdirTemp("", "netmutex-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	netmutexBin = filepath.Join(dir, "netmutex")
	build := exec.Command("go", "build", "-o", netmutexBin, "github.com/netmutex/netmutex/cmd/netmutex")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building netmutex:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { os.RemoveAll(dir) }))
}

// helperMain is a COMMAND run under the lock by the tests:
//
//	interval FILE DURATION  append "start NANOS FENCE", sleep, append "end NANOS FENCE"
//	env                     print NETMUTEX_KEY and NETMUTEX_FENCE
//	touch FILE              create FILE
//	trap FILE STATUS        append "ready PID", then wait; on SIGTERM append "term" and
//	                        exit STATUS, or with STATUS "ignore" go on waiting
func helperMain(args []string) int {
	appendLine := func(file, line string) {
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			panic(err)
		}
		defer f.Close()
		if _, err := f.WriteString(line + "\n"); err != nil {
			panic(err)
		}
	}
	switch args[0] {
	case "interval":
		d, err := time.ParseDuration(args[2])
		if err != nil {
			panic(err)
		}
		fence := os.Getenv("NETMUTEX_FENCE")
		appendLine(args[1], fmt.Sprintf("start %d %s", time.Now().UnixNano(), fence))
		time.Sleep(d)
		appendLine(args[1], fmt.Sprintf("end %d %s", time.Now().UnixNano(), fence))
	case "env":
		fmt.Printf("%s %s\n", os.Getenv("NETMUTEX_KEY"), os.Getenv("NETMUTEX_FENCE"))
	case "touch":
		appendLine(args[1], "ran")
	case "trap":
		sigs := make(chan os.Signal, 4)
		signal.Notify(sigs, syscall.SIGTERM)
		appendLine(args[1], fmt.Sprintf("ready %d", os.Getpid()))
		for range sigs {
			appendLine(args[1], "term")
			if args[2] != "ignore" {
				st, _ := strconv.Atoi(args[2])
				return st
			}
		}
	default:
		panic("unknown helper mode " + args[0])
	}
	return 0
}

// startServer runs a real server on 127.0.0.1:0 with a fresh data directory, stopped
// when the test ends (as the root package's helpers_test.go).
func startServer(t testing.TB, tweak func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := server.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Close() })
	return srv
}

// openClient connects a client of the test's own to addr, closed when the test ends.
func openClient(t testing.TB, addr string) *netmutex.NetMutex {
	t.Helper()
	nm, err := netmutex.Open(5, 500*time.Millisecond, []string{addr}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { nm.Close(1, 500*time.Millisecond) })
	return nm
}

// nmRun is one netmutex process.
type nmRun struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
}

// startRun starts netmutex with args; the helper is "--" followed by helper args, run as
// this test binary in helper mode.
func startRun(t testing.TB, args ...string) *nmRun {
	t.Helper()
	r := &nmRun{stdout: new(lockedBuffer), stderr: new(lockedBuffer)}
	r.cmd = exec.Command(netmutexBin, args...)
	r.cmd.Env = append(os.Environ(), helperEnv+"=1")
	r.cmd.Stdout, r.cmd.Stderr = r.stdout, r.stderr
	require.NoError(t, r.cmd.Start())
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			r.cmd.Process.Kill()
			r.cmd.Wait()
		}
	})
	return r
}

// wait waits for netmutex to exit, at most d, and returns its exit status.
func (r *nmRun) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(d):
		r.cmd.Process.Kill()
		<-done
		t.Fatalf("netmutex %q still running after %v; stderr:\n%s", r.cmd.Args[1:], d, r.stderr)
	}
	t.Logf("netmutex %q: exit %d; stderr:\n%s", r.cmd.Args[1:], r.cmd.ProcessState.ExitCode(), r.stderr)
	return r.cmd.ProcessState.ExitCode()
}

// runHelper runs netmutex with flags, KEY and the helper COMMAND, and returns its status.
func runHelper(t testing.TB, flags []string, key string, helper ...string) (int, *nmRun) {
	t.Helper()
	r := startRun(t, helperArgs(flags, key, helper...)...)
	return r.wait(t, 15*time.Second), r
}

func helperArgs(flags []string, key string, helper ...string) []string {
	args := append([]string{"run"}, flags...)
	args = append(args, key, "--", os.Args[0])
	return append(args, helper...)
}

// waitForFile waits until file has a line starting with prefix and returns that line.
func waitForLine(t testing.TB, file, prefix string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(file)
		for _, line := range splitLines(string(b)) {
			if len(line) >= len(prefix) && line[:len(prefix)] == prefix {
				return line
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no line %q in %s after %v", prefix, file, d)
	return ""
}
