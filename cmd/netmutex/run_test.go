//go:build unix

package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/faultproxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunNoOverlap: netmutex runs on one key, started at once, run their commands one
// after the other (the start and end stamps the commands write never overlap), with
// fences that grow in the order they ran.
func TestRunNoOverlap(t *testing.T) {
	t.Parallel()
	srv := startServer(t, nil)
	file := filepath.Join(t.TempDir(), "stamps")
	flags := []string{"-addr", srv.Addr().String(), "-ttl", "5s", "-wait", "15s"}
	const n = 4
	var runs []*nmRun
	for range n {
		runs = append(runs, startRun(t, helperArgs(flags, "cron-job", "interval", file, "150ms")...))
	}
	for _, r := range runs {
		require.Equal(t, 0, r.wait(t, 15*time.Second))
	}

	type interval struct {
		start, end int64
		fence      uint64
	}
	byFence := map[uint64]*interval{}
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	for _, line := range splitLines(string(b)) {
		f := strings.Fields(line)
		require.Len(t, f, 3, "line %q", line)
		ns, err := strconv.ParseInt(f[1], 10, 64)
		require.NoError(t, err)
		fence, err := strconv.ParseUint(f[2], 10, 64)
		require.NoError(t, err)
		iv := byFence[fence]
		if iv == nil {
			iv = &interval{fence: fence}
			byFence[fence] = iv
		}
		if f[0] == "start" {
			iv.start = ns
		} else {
			iv.end = ns
		}
	}
	require.Len(t, byFence, n, "one fence per run:\n%s", b)
	var ivs []*interval
	for _, iv := range byFence {
		require.NotZero(t, iv.start)
		require.NotZero(t, iv.end)
		ivs = append(ivs, iv)
	}
	slices.SortFunc(ivs, func(a, b *interval) int { return int(a.start - b.start) })
	for i := 1; i < len(ivs); i++ {
		assert.Greater(t, ivs[i].start, ivs[i-1].end, "run with fence %d started before the one with fence %d ended", ivs[i].fence, ivs[i-1].fence)
		assert.Greater(t, ivs[i].fence, ivs[i-1].fence, "fences in the order the commands ran")
	}
}

// TestRunExitStatus: COMMAND's status is netmutex's, a signal death reads as 128+N,
// and netmutex's own failures have their documented statuses.
func TestRunExitStatus(t *testing.T) {
	t.Parallel()
	srv := startServer(t, nil)
	addr := srv.Addr().String()
	notExec := filepath.Join(t.TempDir(), "not-executable")
	require.NoError(t, os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644))
	for _, tc := range []struct {
		name string
		args []string
		want int
		msg  string
	}{
		{"exit 3", []string{"run", "-addr", addr, "st", "--", "sh", "-c", "exit 3"}, 3, ""},
		{"exit 0", []string{"run", "-addr", addr, "st", "--", "true"}, 0, ""},
		{"no --", []string{"run", "-addr", addr, "st", "sh", "-c", "exit 4"}, 4, ""},
		{"killed by SIGTERM", []string{"run", "-addr", addr, "st", "--", "sh", "-c", "kill -TERM $$"}, 128 + 15, ""},
		{"not found", []string{"run", "-addr", addr, "st", "--", "no-such-command-netmutex"}, exitNotFound, "not found"},
		{"not executable", []string{"run", "-addr", addr, "st", "--", notExec}, exitCannotExec, "permission denied"},
		{"no command", []string{"run", "-addr", addr, "st", "--"}, exitUsage, "missing COMMAND"},
		{"bad flag", []string{"run", "-nope", "st", "--", "true"}, exitUsage, "flag provided but not defined"},
		{"ttl over max", []string{"run", "-addr", addr, "-ttl", "2h", "st", "--", "true"}, exitUsage, "TTL over the server's maximum"},
		{"bad key file", []string{"run", "-addr", addr, "-key-file", "/nonexistent/keys", "st", "--", "true"}, exitUsage, "-key-file"},
		{"no server", []string{"run", "-addr", closedUDPAddr(t), "st", "--", "true"}, exitUnavailable, "cannot connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := startRun(t, tc.args...)
			assert.Equal(t, tc.want, r.wait(t, 15*time.Second))
			assert.Contains(t, r.stderr.String(), tc.msg)
		})
	}
}

// closedUDPAddr is a loopback UDP address where nothing listens.
func closedUDPAddr(t *testing.T) string {
	srv := startServer(t, nil)
	addr := srv.Addr().String()
	srv.Close()
	return addr
}

// TestRunWaitExpires: while another client holds the key, netmutex gives up after -wait
// with its own status, without running COMMAND, and leaves the key's queue.
func TestRunWaitExpires(t *testing.T) {
	t.Parallel()
	srv := startServer(t, nil)
	holder := openClient(t, srv.Addr().String())
	var l netmutex.Lock
	require.NoError(t, holder.Lock(5, 500*time.Millisecond, &l, "busy", 30*time.Second))

	marker := filepath.Join(t.TempDir(), "ran")
	start := time.Now()
	st, r := runHelper(t, []string{"-addr", srv.Addr().String(), "-wait", "300ms"}, "busy", "touch", marker)
	assert.Equal(t, exitNotAcquired, st)
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
	assert.Contains(t, r.stderr.String(), "not acquired within -wait")
	assert.NoFileExists(t, marker, "COMMAND ran without the lock")

	// The waiter left the queue: the key goes to a new client once released.
	require.NoError(t, holder.Unlock(5, 500*time.Millisecond, &l))
	other := openClient(t, srv.Addr().String())
	var o netmutex.Lock
	require.NoError(t, other.Lock(5, 500*time.Millisecond, &o, "busy", time.Second))
}

// TestRunEnvironment: COMMAND gets NETMUTEX_KEY and NETMUTEX_FENCE, and the fences of
// successive runs grow.
func TestRunEnvironment(t *testing.T) {
	t.Parallel()
	srv := startServer(t, nil)
	var last uint64
	for i := range 3 {
		st, r := runHelper(t, []string{"-addr", srv.Addr().String()}, "env-key", "env")
		require.Equal(t, 0, st)
		f := strings.Fields(r.stdout.String())
		require.Len(t, f, 2, "stdout %q", r.stdout)
		assert.Equal(t, "env-key", f[0])
		fence, err := strconv.ParseUint(f[1], 10, 64)
		require.NoError(t, err)
		if i > 0 {
			assert.Greater(t, fence, last, "fences grow")
		}
		last = fence
	}
}

// TestRunLockLost: when the server stops hearing netmutex (a blackholed proxy between
// them), COMMAND gets SIGTERM, then SIGKILL (it ignores SIGTERM) after the grace, capped
// by the TTL, and is dead before the server lets the lock expire and another client
// takes the key; netmutex exits with the lock-lost status.
func TestRunLockLost(t *testing.T) {
	t.Parallel()
	srv := startServer(t, nil)
	p, err := faultproxy.New(faultproxy.Config{Upstream: srv.Addr().String(), Logf: t.Logf})
	require.NoError(t, err)
	defer p.Close()
	const ttl = 3 * time.Second // margin 300ms, grace 150ms
	file := filepath.Join(t.TempDir(), "trap")
	r := startRun(t, helperArgs([]string{"-addr", p.Addr().String(), "-ttl", ttl.String(), "-grace", "5s"}, "lost", "trap", file, "ignore")...)
	ready := waitForLine(t, file, "ready ", 10*time.Second)
	pid, err := strconv.Atoi(strings.Fields(ready)[1])
	require.NoError(t, err)
	time.Sleep(ttl / 2) // renewals land meanwhile

	// Another client polls for the key; it gets it once the server let the lock expire.
	other := openClient(t, srv.Addr().String())
	var freeAt atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	defer func() { close(stop); wg.Wait() }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		var o netmutex.Lock
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if err := other.Lock(5, 500*time.Millisecond, &o, "lost", time.Second); err == nil {
				freeAt.Store(time.Now().UnixNano())
				return
			}
		}
	}()

	cut := time.Now()
	p.Blackhole(faultproxy.ToServer, true)
	var deadAt time.Time
	for deadAt.IsZero() {
		// The helper is netmutex's child: gone (ESRCH) once dead and reaped.
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			deadAt = time.Now()
		}
		require.Less(t, time.Since(cut), 3*ttl, "COMMAND still alive")
		time.Sleep(2 * time.Millisecond)
	}
	st := r.wait(t, 10*time.Second)
	assert.Equal(t, exitLost, st)
	assert.Contains(t, r.stderr.String(), "lock could not be renewed in time")
	assert.Contains(t, r.stderr.String(), "SIGTERM")
	assert.Contains(t, r.stderr.String(), "killed by signal 9")
	waitForLine(t, file, "term", time.Second) // SIGTERM came first

	// The server renewed last before cut, so it expires the lock no earlier than about
	// cut+ttl less a renewal period; COMMAND was dead well before cut+ttl.
	assert.Less(t, deadAt.Sub(cut), ttl, "COMMAND outlived the TTL after the cut")
	deadline := time.Now().Add(3 * ttl)
	for freeAt.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	require.NotZero(t, freeAt.Load(), "the server never let the lock expire")
	free := time.Unix(0, freeAt.Load())
	assert.True(t, deadAt.Before(free), "COMMAND died %v after the key went to another client", deadAt.Sub(free))
	t.Logf("cut → COMMAND dead %v, cut → key taken by another %v", deadAt.Sub(cut), free.Sub(cut))
}

// TestRunForwardsSIGTERM: SIGTERM to netmutex reaches COMMAND, whose status netmutex
// then exits with, and the key is released at once.
func TestRunForwardsSIGTERM(t *testing.T) {
	t.Parallel()
	srv := startServer(t, nil)
	file := filepath.Join(t.TempDir(), "trap")
	r := startRun(t, helperArgs([]string{"-addr", srv.Addr().String()}, "fwd", "trap", file, "42")...)
	waitForLine(t, file, "ready ", 10*time.Second)
	require.NoError(t, r.cmd.Process.Signal(syscall.SIGTERM))
	assert.Equal(t, 42, r.wait(t, 10*time.Second))
	waitForLine(t, file, "term", time.Second)
	other := openClient(t, srv.Addr().String())
	var o netmutex.Lock
	require.NoError(t, other.Lock(5, 500*time.Millisecond, &o, "fwd", time.Second), "key released")
}

// TestRunSignalWhileWaiting: SIGINT while netmutex waits for the key ends the wait with
// 128+SIGINT, COMMAND never runs, and the key does not go to the departed waiter.
func TestRunSignalWhileWaiting(t *testing.T) {
	t.Parallel()
	srv := startServer(t, nil)
	holder := openClient(t, srv.Addr().String())
	var l netmutex.Lock
	require.NoError(t, holder.Lock(5, 500*time.Millisecond, &l, "queued", 30*time.Second))
	marker := filepath.Join(t.TempDir(), "ran")
	r := startRun(t, helperArgs([]string{"-addr", srv.Addr().String(), "-wait", "30s"}, "queued", "touch", marker)...)
	time.Sleep(500 * time.Millisecond) // connected and queued
	require.NoError(t, r.cmd.Process.Signal(syscall.SIGINT))
	assert.Equal(t, 128+int(syscall.SIGINT), r.wait(t, 5*time.Second))
	assert.Contains(t, r.stderr.String(), "while waiting")
	require.NoError(t, holder.Unlock(5, 500*time.Millisecond, &l))
	other := openClient(t, srv.Addr().String())
	var o netmutex.Lock
	require.NoError(t, other.Lock(5, 500*time.Millisecond, &o, "queued", time.Second), "key free after the waiter left")
	assert.NoFileExists(t, marker)
}

func TestMaxGrace(t *testing.T) {
	assert.Equal(t, 1500*time.Millisecond, maxGrace(30*time.Second))
	assert.Equal(t, 100*time.Millisecond, maxGrace(2*time.Second))
	assert.Equal(t, 6*time.Second, maxGrace(2*time.Minute))
}

func TestIsolationInfo(t *testing.T) {
	info := isolationInfo([]string{"-ttl", "5s", "job", "--", "sh", "-c", "echo 'hi there'"})
	host, _ := os.Hostname()
	assert.True(t, strings.HasPrefix(info, "Hostname: "+host+"\nPid: "+strconv.Itoa(os.Getpid())+"\n"), info)
	assert.True(t, strings.HasSuffix(info, `Command: netmutex run -ttl 5s job -- sh -c "echo 'hi there'"`), info)
	long := isolationInfo([]string{"job", "--", strings.Repeat("é", 400)})
	assert.LessOrEqual(t, len(long), netmutex.MaxIsolationInfo)
	assert.True(t, strings.HasSuffix(long, "é"), "cut on a character boundary")
}

func TestUsage(t *testing.T) {
	var out, errb strings.Builder
	assert.Equal(t, exitUsage, mainStatus(nil, &out, &errb))
	assert.Contains(t, errb.String(), "exit statuses")
	assert.Equal(t, exitUsage, mainStatus([]string{"frobnicate"}, &out, &errb))
	assert.Equal(t, 0, mainStatus([]string{"-h"}, &out, &errb))
	assert.Contains(t, out.String(), "netmutex run")
	errb.Reset()
	assert.Equal(t, 0, mainStatus([]string{"run", "-h"}, &out, &errb))
	assert.Contains(t, errb.String(), "-grace")
	assert.Contains(t, errb.String(), "75")
	for _, args := range [][]string{
		{"run"},
		{"run", "key"},
		{"run", "key", "--"},
		{"run", "-wait", "0s", "key", "--", "true"},
		{"run", "-ttl", "-1s", "key", "--", "true"},
		{"run", "-addr", ",", "key", "--", "true"},
		{"run", "", "--", "true"},
		{"run", strings.Repeat("k", netmutex.MaxKeySize+1), "--", "true"},
	} {
		assert.Equal(t, exitUsage, mainStatus(args, &out, &errb), "%q", args)
	}
}
