//go:build unix

package tests

import (
	"bufio"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSIGSTOPHolderIsFenced: the same with a holder in its own process, stopped with
// SIGSTOP for longer than its TTL and resumed with SIGCONT.
func TestSIGSTOPHolderIsFenced(t *testing.T) {
	d, isoLog := isolationDaemon(t)
	holderBin := sharedBinary(t, "github.com/netmutex/netmutex/tests/holder", "holder")
	const key, ttl = "sigstop", 300 * time.Millisecond
	var store fencedStore

	cmd := exec.Command(holderBin, "-addr", d.addr, "-key", key, "-ttl", ttl.String(), "-beat", "50ms", "-info", "process-holder")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	defer func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
	}()

	// The holder's events, applied to the store as they come: its writes are real
	// attempts on the resource.
	type event struct {
		line     string
		writeErr error
	}
	events := make(chan event, 100)
	readDone := make(chan struct{})
	var fa uint64
	go func() {
		defer close(readDone)
		defer close(events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ev := event{line: sc.Text()}
			f := strings.Fields(ev.line)
			if len(f) == 3 && f[0] == "write" {
				fence, _ := strconv.ParseUint(f[1], 10, 64)
				ev.writeErr = store.write(fence, "proc#"+f[2])
			}
			events <- ev
		}
	}()
	next := func(what string) event {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("holder ended while waiting for %s; stderr: %s", what, stderr.String())
			}
			return ev
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s from the holder", what)
		}
		return event{}
	}
	ev := next("lock")
	_, err = fmt.Sscanf(ev.line, "locked %d", &fa)
	require.NoError(t, err, "holder said %q", ev.line)
	// Let it heartbeat and write a few times.
	for updates := 0; updates < 3; {
		ev := next("heartbeat")
		require.NoError(t, ev.writeErr, "holder's write rejected before the stop")
		if ev.line == "updated" {
			updates++
		}
		require.False(t, strings.HasPrefix(ev.line, "update-error"), "heartbeat failed before the stop: %s", ev.line)
	}

	require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
	b, lb, granted, lastRefused := takeOver(t, d.addr, key, ttl)
	defer b.Close(1, time.Second)
	fb := lb.FenceID()
	require.Greater(t, fb, fa, "new holder's fence not above the stopped holder's")
	require.NoError(t, store.write(fb, "B"))
	// Drain what the holder printed before the stop took effect.
	for drained := false; !drained; {
		select {
		case <-events:
		case <-time.After(50 * time.Millisecond):
			drained = true
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGCONT))

	var lateWrites, lateRejected int
	var updateErr string
	for ev := range events {
		f := strings.Fields(ev.line)
		switch {
		case len(f) == 3 && f[0] == "write":
			lateWrites++
			if ev.writeErr != nil {
				lateRejected++
			}
		case strings.HasPrefix(ev.line, "update-error "):
			updateErr = strings.TrimPrefix(ev.line, "update-error ")
		}
	}
	<-readDone
	err = cmd.Wait() // before reading stderr, which the command's copier writes until then
	require.NoError(t, err, "holder; stderr: %s", stderr.String())
	assert.NotZero(t, lateWrites, "after SIGCONT the holder never wrote")
	assert.Equal(t, lateWrites, lateRejected, "after SIGCONT the holder wrote %d times; want every late write rejected", lateWrites)
	assert.Equal(t, netmutex.ErrIsolated.Error(), updateErr, "the resumed holder's heartbeat error")
	isoStart, isoEnd := isolationTimes(t, isoLog, "process-holder")
	checkIsolatedFirst(t, isoStart, isoEnd, granted, lastRefused)
	t.Logf("store: accepted %d writes, rejected %v; isolation ran %v, key granted %v after its end",
		len(store.accepted), store.rejected, time.Duration(isoEnd-isoStart), time.Duration(granted-isoEnd))
}
