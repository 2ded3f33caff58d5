package tests

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netmutex/netmutex"
)

// fencedStore is the protected resource: it rejects a write whose fence is below the
// highest it has seen, as the resource behind a netmutex lock must.
type fencedStore struct {
	mu       sync.Mutex
	highest  uint64
	accepted []string
	rejected []string
}

var errStaleFence = errors.New("fenced store: stale fence")

func (s *fencedStore) write(fence uint64, what string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fence < s.highest {
		s.rejected = append(s.rejected, fmt.Sprintf("%s@%d", what, fence))
		return errStaleFence
	}
	s.highest = fence
	s.accepted = append(s.accepted, fmt.Sprintf("%s@%d", what, fence))
	return nil
}

func TestFencedStoreRejectsLowerFence(t *testing.T) {
	var s fencedStore
	if s.write(5, "a") != nil || s.write(5, "a again") != nil || s.write(7, "b") != nil {
		t.Fatal("in-order writes rejected")
	}
	if s.write(5, "a late") != errStaleFence {
		t.Fatal("a write with a lower fence was accepted")
	}
}

// isolateDelay is how long the test's isolation command runs: long enough that a
// server releasing the key before the command finished would be caught granting it.
const isolateDelay = 300 * time.Millisecond

// isolationDaemon starts netmutexd with an isolation command that logs its start and
// end, with the IsolationInfo and wall-clock nanoseconds, to the returned file.
func isolationDaemon(t *testing.T) (*daemon, string) {
	t.Helper()
	bin := buildBinary(t, t.TempDir(), "github.com/netmutex/netmutex/cmd/netmutexd", "netmutexd")
	isoLog := filepath.Join(t.TempDir(), "isolations")
	cmd := fmt.Sprintf(`info=$(cat); echo "start $info $(date +%%s%%N)" >> %s; sleep %g; echo "end $info $(date +%%s%%N)" >> %s`,
		isoLog, isolateDelay.Seconds(), isoLog)
	d := newDaemon(t, bin, "-max-ttl", "2s", "-session-timeout", "30s", "-isolate-cmd", cmd, "-log-level", "info")
	d.start()
	return d, isoLog
}

// isolationTimes returns the start and end times of the isolation command run for
// info, waiting for the end line.
func isolationTimes(t *testing.T, isoLog, info string) (start, end int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(isoLog)
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[1] == info {
				ts, _ := strconv.ParseInt(f[2], 10, 64)
				if f[0] == "start" {
					start = ts
				} else {
					end = ts
				}
			}
		}
		if start != 0 && end != 0 {
			return start, end
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no isolation of %q logged in %s", info, isoLog)
	return
}

// takeOver polls Lock on key from a second client until it is granted, and returns
// the lock with the wall-clock return time of the granting call and of the last
// refusal.
func takeOver(t *testing.T, addr, key string, ttl time.Duration) (nm *netmutex.NetMutex, l *netmutex.Lock, granted, lastRefused int64) {
	t.Helper()
	nm, err := netmutex.Open(5, 200*time.Millisecond, []string{addr}, &netmutex.Options{IsolationInfo: "contender"})
	if err != nil {
		t.Fatal(err)
	}
	l = new(netmutex.Lock)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		err := nm.Lock(5, 200*time.Millisecond, l, key, ttl)
		now := time.Now().UnixNano()
		switch {
		case err == nil:
			return nm, l, now, lastRefused
		case errors.Is(err, netmutex.ErrLocked):
			lastRefused = now
		default:
			t.Fatalf("contender: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	nm.Close(1, time.Second)
	t.Fatal("the key was never granted to the contender")
	return
}

// checkIsolatedFirst checks that the key stayed locked until the isolation command of
// the stalled holder had finished, and was granted only after.
func checkIsolatedFirst(t *testing.T, isoStart, isoEnd, granted, lastRefused int64) {
	t.Helper()
	if isoEnd > granted {
		t.Errorf("the key was granted again %v before the isolation command ended", time.Duration(isoEnd-granted))
	}
	if lastRefused < isoStart {
		t.Errorf("the key was not refused while the isolation command ran (last refusal %v before its start)", time.Duration(isoStart-lastRefused))
	}
}

// TestStalledGoroutineIsFenced: a holder goroutine stops heartbeating for longer than
// its TTL. The server isolates its session and runs the isolation command before the
// key can be granted again; the new holder's fence is higher; the stale holder's late
// write is rejected by the fenced store and its next call returns ErrIsolated.
func TestStalledGoroutineIsFenced(t *testing.T) {
	d, isoLog := isolationDaemon(t)
	const key, ttl = "stall", 200 * time.Millisecond
	var store fencedStore

	a, err := netmutex.Open(5, 200*time.Millisecond, []string{d.addr}, &netmutex.Options{IsolationInfo: "goroutine-holder"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(1, time.Second)
	var la netmutex.Lock
	if err := a.Lock(5, 200*time.Millisecond, &la, key, ttl); err != nil {
		t.Fatal(err)
	}
	fa := la.FenceID()
	if err := store.write(fa, "A"); err != nil {
		t.Fatal(err)
	}
	// Heartbeats work while A is alive.
	for i := 0; i < 3; i++ {
		time.Sleep(ttl / 4)
		if err := a.Update(5, 200*time.Millisecond, &la, ttl); err != nil {
			t.Fatalf("heartbeat %d: %v", i, err)
		}
	}

	// A stalls (a GC pause, a blocked goroutine): no heartbeat. Meanwhile B takes over.
	stalled := make(chan struct{})
	var aWriteErr, aNextErr error
	go func() {
		<-stalled // A resumes only once B holds the key and has written
		aWriteErr = store.write(fa, "A late")
		aNextErr = a.Update(5, 200*time.Millisecond, &la, ttl)
		stalled <- struct{}{}
	}()
	b, lb, granted, lastRefused := takeOver(t, d.addr, key, ttl)
	defer b.Close(1, time.Second)
	fb := lb.FenceID()
	if fb <= fa {
		t.Fatalf("new holder's fence %d not above the stalled holder's %d", fb, fa)
	}
	if err := store.write(fb, "B"); err != nil {
		t.Fatal(err)
	}
	stalled <- struct{}{}
	<-stalled

	if !errors.Is(aWriteErr, errStaleFence) {
		t.Errorf("the stalled holder's late write: %v, want it rejected", aWriteErr)
	}
	if !errors.Is(aNextErr, netmutex.ErrIsolated) {
		t.Errorf("the stalled holder's next call: %v, want ErrIsolated", aNextErr)
	}
	isoStart, isoEnd := isolationTimes(t, isoLog, "goroutine-holder")
	checkIsolatedFirst(t, isoStart, isoEnd, granted, lastRefused)
	t.Logf("store: accepted %v, rejected %v; isolation ran %v, key granted %v after its end",
		store.accepted, store.rejected, time.Duration(isoEnd-isoStart), time.Duration(granted-isoEnd))
}

// TestSIGSTOPHolderIsFenced: the same with a holder in its own process, stopped with
// SIGSTOP for longer than its TTL and resumed with SIGCONT.
func TestSIGSTOPHolderIsFenced(t *testing.T) {
	d, isoLog := isolationDaemon(t)
	holderBin := buildBinary(t, t.TempDir(), "github.com/netmutex/netmutex/tests/holder", "holder")
	const key, ttl = "sigstop", 300 * time.Millisecond
	var store fencedStore

	cmd := exec.Command(holderBin, "-addr", d.addr, "-key", key, "-ttl", ttl.String(), "-beat", "50ms", "-info", "process-holder")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
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
	if _, err := fmt.Sscanf(ev.line, "locked %d", &fa); err != nil {
		t.Fatalf("holder said %q", ev.line)
	}
	// Let it heartbeat and write a few times.
	for updates := 0; updates < 3; {
		ev := next("heartbeat")
		if ev.writeErr != nil {
			t.Fatalf("holder's write rejected before the stop: %v", ev.writeErr)
		}
		if ev.line == "updated" {
			updates++
		}
		if strings.HasPrefix(ev.line, "update-error") {
			t.Fatalf("heartbeat failed before the stop: %s", ev.line)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	b, lb, granted, lastRefused := takeOver(t, d.addr, key, ttl)
	defer b.Close(1, time.Second)
	fb := lb.FenceID()
	if fb <= fa {
		t.Fatalf("new holder's fence %d not above the stopped holder's %d", fb, fa)
	}
	if err := store.write(fb, "B"); err != nil {
		t.Fatal(err)
	}
	// Drain what the holder printed before the stop took effect.
	for drained := false; !drained; {
		select {
		case <-events:
		case <-time.After(50 * time.Millisecond):
			drained = true
		}
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

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
	if err := cmd.Wait(); err != nil {
		t.Fatalf("holder: %v; stderr: %s", err, stderr.String())
	}
	if lateWrites == 0 || lateRejected != lateWrites {
		t.Errorf("after SIGCONT the holder wrote %d times, %d rejected; want every late write rejected", lateWrites, lateRejected)
	}
	if updateErr != netmutex.ErrIsolated.Error() {
		t.Errorf("the resumed holder's heartbeat failed with %q, want %q", updateErr, netmutex.ErrIsolated)
	}
	isoStart, isoEnd := isolationTimes(t, isoLog, "process-holder")
	checkIsolatedFirst(t, isoStart, isoEnd, granted, lastRefused)
	t.Logf("store: accepted %d writes, rejected %v; isolation ran %v, key granted %v after its end",
		len(store.accepted), store.rejected, time.Duration(isoEnd-isoStart), time.Duration(granted-isoEnd))
}
