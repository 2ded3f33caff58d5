package tests

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	require.NoError(t, s.write(5, "a"), "in-order write rejected")
	require.NoError(t, s.write(5, "a again"), "in-order write rejected")
	require.NoError(t, s.write(7, "b"), "in-order write rejected")
	assert.Same(t, errStaleFence, s.write(5, "a late"), "a write with a lower fence was accepted")
}

// isolateDelay is how long the test's isolation command runs: long enough that a
// server releasing the key before the command finished would be caught granting it.
const isolateDelay = 300 * time.Millisecond

// isolationDaemon starts netmutexd with an isolation command that logs its start and
// end, with the IsolationInfo and wall-clock nanoseconds, to the returned file.
func isolationDaemon(t *testing.T) (*daemon, string) {
	t.Helper()
	bin := netmutexdBin(t)
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
	require.NoError(t, err)
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
	assert.LessOrEqual(t, isoEnd, granted,
		"the key was granted again %v before the isolation command ended", time.Duration(isoEnd-granted))
	assert.GreaterOrEqual(t, lastRefused, isoStart,
		"the key was not refused while the isolation command ran (last refusal %v before its start)", time.Duration(isoStart-lastRefused))
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
	require.NoError(t, err)
	defer a.Close(1, time.Second)
	var la netmutex.Lock
	require.NoError(t, a.Lock(5, 200*time.Millisecond, &la, key, ttl))
	fa := la.FenceID()
	require.NoError(t, store.write(fa, "A"))
	// Heartbeats work while A is alive.
	for i := 0; i < 3; i++ {
		time.Sleep(ttl / 4)
		require.NoError(t, a.Update(5, 200*time.Millisecond, &la, ttl), "heartbeat %d", i)
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
	require.Greater(t, fb, fa, "new holder's fence not above the stalled holder's")
	require.NoError(t, store.write(fb, "B"))
	stalled <- struct{}{}
	<-stalled

	assert.ErrorIs(t, aWriteErr, errStaleFence, "the stalled holder's late write must be rejected")
	assert.ErrorIs(t, aNextErr, netmutex.ErrIsolated, "the stalled holder's next call")
	isoStart, isoEnd := isolationTimes(t, isoLog, "goroutine-holder")
	checkIsolatedFirst(t, isoStart, isoEnd, granted, lastRefused)
	t.Logf("store: accepted %v, rejected %v; isolation ran %v, key granted %v after its end",
		store.accepted, store.rejected, time.Duration(isoEnd-isoStart), time.Duration(granted-isoEnd))
}
