package netmutex

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
	"github.com/netmutex/netmutex/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestLockUpdateUnlock(t *testing.T) {
	srv := startServer(t, nil)
	nm := openClient(t, srv, nil)

	var l Lock
	require.Empty(t, l.Key(), "zero Lock holds a key")
	require.Zero(t, l.FenceID(), "zero Lock has a fence")
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "job:1", time.Second), "Lock")
	require.Equal(t, "job:1", l.Key(), "key after Lock")
	require.NotZero(t, l.FenceID(), "fence after Lock")
	fence := l.FenceID()
	require.NoError(t, nm.Update(testRetries, testTimeout, &l, 2*time.Second), "Update")
	require.Equal(t, fence, l.FenceID(), "Update changed the fence")
	require.NoError(t, nm.Unlock(testRetries, testTimeout, &l), "Unlock")
	require.Empty(t, l.Key(), "Unlock left the Lock holding a key")
	// A Lock is reusable after Unlock, and the new grant has a greater fence.
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "job:1", time.Second), "Lock again")
	require.Greater(t, l.FenceID(), fence, "fence did not grow")
	require.NoError(t, nm.Unlock(testRetries, testTimeout, &l))
}

func TestArgumentErrors(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.MaxTTL = 10 * time.Second })
	nm := openClient(t, srv, nil)
	long := strings.Repeat("k", MaxKeySize+1)

	var held Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &held, "held", time.Second))
	before := nm.Stats().FramesOut
	var l Lock
	cases := []struct {
		name string
		err  error
		call func() error
	}{
		{"empty key", ErrEmptyKey, func() error { return nm.Lock(1, testTimeout, &l, "", time.Second) }},
		{"long key", ErrLongKey, func() error { return nm.Lock(1, testTimeout, &l, long, time.Second) }},
		{"zero ttl", ErrWrongTTL, func() error { return nm.Lock(1, testTimeout, &l, "k", 0) }},
		{"negative ttl", ErrWrongTTL, func() error { return nm.Lock(1, testTimeout, &l, "k", -time.Second) }},
		{"ttl over max", ErrTTLTooLong, func() error { return nm.Lock(1, testTimeout, &l, "k", 11*time.Second) }},
		{"nil lock", ErrNilLock, func() error { return nm.Lock(1, testTimeout, nil, "k", time.Second) }},
		{"lock in use", ErrLockInUse, func() error { return nm.Lock(1, testTimeout, &held, "other", time.Second) }},
		{"update never locked", ErrNotLocked, func() error { return nm.Update(1, testTimeout, &l, time.Second) }},
		{"update negative ttl", ErrWrongTTL, func() error { return nm.Update(1, testTimeout, &held, -1) }},
		{"update ttl over max", ErrTTLTooLong, func() error { return nm.Update(1, testTimeout, &held, time.Minute) }},
		{"update nil", ErrNilLock, func() error { return nm.Update(1, testTimeout, nil, time.Second) }},
		{"unlock never locked", ErrNotLocked, func() error { return nm.Unlock(1, testTimeout, &l) }},
		{"unlock nil", ErrNilLock, func() error { return nm.Unlock(1, testTimeout, nil) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, tc.call(), tc.err)
		})
	}
	require.Equal(t, before, nm.Stats().FramesOut, "frames sent by bad arguments")
	// The held lock is untouched by all of that.
	require.NoError(t, nm.Update(testRetries, testTimeout, &held, time.Second), "held lock after bad calls")
}

func TestOpenErrors(t *testing.T) {
	_, err := Open(1, testTimeout, nil, nil)
	require.ErrorIs(t, err, ErrNoServers, "no addresses")
	long := &Options{IsolationInfo: strings.Repeat("i", MaxIsolationInfo+1)}
	_, err = Open(1, testTimeout, []string{"127.0.0.1:1"}, long)
	require.ErrorIs(t, err, ErrLongIsolationInfo, "long isolation info")
	srv := startServer(t, nil)
	for _, spin := range []time.Duration{-time.Nanosecond, MaxSpinWait + time.Nanosecond} {
		_, err = Open(1, testTimeout, []string{srv.Addr().String()}, &Options{SpinWait: spin})
		require.ErrorIs(t, err, ErrWrongSpinWait, "SpinWait %v", spin)
	}
	require.Zero(t, srv.Stats().Datagrams, "a refused Open sent nothing")
	dead := deadAddr(t)
	start := time.Now()
	_, err = Open(2, 50*time.Millisecond, []string{dead}, nil)
	require.ErrorIs(t, err, ErrNoServers, "dead server")
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond, "Open gave up before its attempts were spent")
}

// deadAddr returns a loopback UDP address where nothing answers.
func deadAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// TestSpinWait: a client that polls its socket between replies (Options.SpinWait) gets
// every answer right, sequentially and with company, and Close stops its spinning
// receive loop at once (TestMain checks that no goroutine outlives the test).
func TestSpinWait(t *testing.T) {
	srv := startServer(t, nil)
	nm, err := Open(testRetries, testTimeout, []string{srv.Addr().String()}, &Options{SpinWait: MaxSpinWait})
	require.NoError(t, err)
	var l Lock
	for i := range 200 {
		require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Second), "pair %d", i)
		require.NoError(t, nm.Unlock(testRetries, testTimeout, &l), "pair %d", i)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var l Lock
			key := fmt.Sprint("g", g)
			for range 50 {
				assert.NoError(t, nm.Lock(testRetries, testTimeout, &l, key, time.Second))
				assert.NoError(t, nm.Unlock(testRetries, testTimeout, &l))
			}
		}()
	}
	wg.Wait()
	require.Equal(t, uint64(600), srv.Stats().Grants)
	start := time.Now()
	require.NoError(t, nm.Close(testRetries, testTimeout))
	require.Less(t, time.Since(start), time.Second, "Close waits for a spinning receive loop")
}

func TestOpenDeadThenLive(t *testing.T) {
	srv := startServer(t, nil)
	nm, err := Open(testRetries, 100*time.Millisecond, []string{deadAddr(t), srv.Addr().String()}, nil)
	require.NoError(t, err, "Open")
	defer nm.Close(1, testTimeout)
	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Second))
}

func TestOpenFollowsRedirect(t *testing.T) {
	leader := startServer(t, nil)
	follower := startServer(t, func(c *server.Config) {
		c.ServerID = 2
		c.Redirect = &wire.Server{ID: 1, Addr: leader.Addr().String()}
	})
	nm, err := Open(testRetries, testTimeout, []string{follower.Addr().String()}, nil)
	require.NoError(t, err, "Open through a follower")
	defer nm.Close(1, testTimeout)
	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Second))
	require.Equal(t, uint64(1), leader.Stats().Grants, "locks granted by the leader")
}

func TestContention(t *testing.T) {
	srv := startServer(t, nil)
	a := openClient(t, srv, nil)
	b := openClient(t, srv, nil)

	var holders, grants, refusals atomic.Int64
	var mu sync.Mutex
	var lastFence uint64
	var wg sync.WaitGroup
	// Run for at least 500ms, and on until both outcomes were seen (a loaded machine
	// may serialise the goroutines for a while), within 10s.
	minEnd, maxEnd := time.Now().Add(500*time.Millisecond), time.Now().Add(10*time.Second)
	running := func() bool {
		now := time.Now()
		return now.Before(minEnd) || (now.Before(maxEnd) && (grants.Load() == 0 || refusals.Load() == 0))
	}
	for i := 0; i < 16; i++ {
		nm := a
		if i%2 == 1 {
			nm = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var l Lock
			for running() {
				err := nm.Lock(testRetries, testTimeout, &l, "contended", time.Second)
				if err == ErrLocked {
					refusals.Add(1)
					continue
				}
				// assert, not require: this is not the test's goroutine.
				if !assert.NoError(t, err) {
					return
				}
				assert.Equal(t, int64(1), holders.Add(1), "two holders at once")
				mu.Lock()
				assert.Greater(t, l.FenceID(), lastFence, "fence after the previous grant's")
				lastFence = l.FenceID()
				mu.Unlock()
				grants.Add(1)
				holders.Add(-1)
				if !assert.NoError(t, nm.Unlock(testRetries, testTimeout, &l)) {
					return
				}
			}
		}()
	}
	wg.Wait()
	require.NotZero(t, grants.Load(), "no contention seen: no grants (%d refusals)", refusals.Load())
	require.NotZero(t, refusals.Load(), "no contention seen: no refusals (%d grants)", grants.Load())
	t.Logf("%d grants, %d refusals", grants.Load(), refusals.Load())
}

func TestExpiryIsolates(t *testing.T) {
	out := filepath.Join(t.TempDir(), "isolated")
	srv := startServer(t, func(c *server.Config) {
		c.IsolateCmd = "cat > " + out
	})
	info := "Hostname: test\nPid: 42"
	nm := openClient(t, srv, &Options{IsolationInfo: info})
	other := openClient(t, srv, nil)

	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "short", 100*time.Millisecond))
	// The key is unavailable to others until the isolation command has run.
	waitFor(t, 5*time.Second, func() bool {
		b, err := os.ReadFile(out)
		return err == nil && string(b) == info
	})
	require.ErrorIs(t, nm.Update(testRetries, testTimeout, &l, time.Second), ErrIsolated, "Update after expiry")
	var l2 Lock
	require.ErrorIs(t, nm.Lock(testRetries, testTimeout, &l2, "fresh", time.Second), ErrIsolated, "Lock after isolation")
	var lo Lock
	waitFor(t, 5*time.Second, func() bool {
		return other.Lock(testRetries, testTimeout, &lo, "short", time.Second) == nil
	})
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	// Not require.Eventually: it runs cond on another goroutine and gives up on it
	// at the deadline, leaving it running against a client the test is closing.
	for !cond() {
		require.False(t, time.Now().After(end), "condition not met in time")
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnlockAll(t *testing.T) {
	srv := startServer(t, nil)
	holder := openClient(t, srv, nil)
	admin := openClient(t, srv, nil)
	var l Lock
	require.NoError(t, holder.Lock(testRetries, testTimeout, &l, "k", time.Minute))
	require.NoError(t, admin.UnlockAll(testRetries, testTimeout))
	require.ErrorIs(t, holder.Update(testRetries, testTimeout, &l, time.Minute), ErrIsolated, "holder after UnlockAll")
	var l2 Lock
	waitFor(t, 5*time.Second, func() bool {
		return admin.Lock(testRetries, testTimeout, &l2, "k", time.Second) == nil
	})
}

func TestCloseThenErrDisconnected(t *testing.T) {
	srv := startServer(t, nil)
	nm, err := Open(testRetries, testTimeout, []string{srv.Addr().String()}, nil)
	require.NoError(t, err)
	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Minute))
	require.NoError(t, nm.Close(testRetries, testTimeout), "Close")
	ctx := context.Background()
	for name, err := range map[string]error{
		"Lock":      nm.Lock(1, testTimeout, &Lock{}, "k2", time.Second),
		"Update":    nm.Update(1, testTimeout, &l, time.Second),
		"Unlock":    nm.Unlock(1, testTimeout, &l),
		"UnlockAll": nm.UnlockAll(1, testTimeout),
		"Close":     nm.Close(1, testTimeout),
		"LockCtx":   nm.LockContext(ctx, &Lock{}, "k2", time.Second),
		"CloseCtx":  nm.CloseContext(ctx),
	} {
		assert.ErrorIs(t, err, ErrDisconnected, "%s after Close", name)
	}
	// Close ended the session, so its lock is free at once.
	other := openClient(t, srv, nil)
	var l2 Lock
	require.NoError(t, other.Lock(testRetries, testTimeout, &l2, "k", time.Second), "key of a closed session")
}

func TestContextForms(t *testing.T) {
	srv := startServer(t, nil)
	nm, err := OpenContext(context.Background(), []string{srv.Addr().String()}, &Options{Timeout: 100 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var l Lock
	require.NoError(t, nm.LockContext(ctx, &l, "ctx", time.Second))
	var l2 Lock
	require.ErrorIs(t, nm.LockContext(ctx, &l2, "ctx", time.Second), ErrLocked, "second LockContext")
	require.NoError(t, nm.UpdateContext(ctx, &l, time.Second))
	require.NoError(t, nm.UnlockContext(ctx, &l))
	require.NoError(t, nm.UnlockAllContext(ctx))
	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	require.ErrorIs(t, nm.LockContext(cancelled, &l, "ctx", time.Second), context.Canceled, "cancelled context")
	require.NoError(t, nm.CloseContext(ctx))
}

// TestContextDeadlineUnanswered checks that a call to a server that stopped answering
// ends at the context's deadline, and the original form with ErrTooMuchRetries.
func TestContextDeadlineUnanswered(t *testing.T) {
	srv := startServer(t, nil)
	nm := openClient(t, srv, &Options{Timeout: 20 * time.Millisecond, Retries: 1000})
	srv.Abort()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	var l Lock
	start := time.Now()
	require.ErrorIs(t, nm.LockContext(ctx, &l, "k", time.Second), context.DeadlineExceeded, "LockContext to a dead server")
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond, "gave up before the deadline")
	err := nm.Lock(3, 20*time.Millisecond, &l, "k", time.Second)
	require.ErrorIs(t, err, ErrTooMuchRetries, "Lock to a dead server")
	var te interface{ Timeout() bool }
	require.ErrorAs(t, err, &te, "ErrTooMuchRetries has no Timeout()")
	require.True(t, te.Timeout(), "ErrTooMuchRetries does not report Timeout()")
	require.NotZero(t, nm.Stats().Retransmits, "no retransmission counted")
}

// TestOpenBeforeServer: a client started before its server finds it soon after the
// server comes up, without waiting out a long attempt timeout.
func TestOpenBeforeServer(t *testing.T) {
	addr := deadAddr(t)
	type opened struct {
		nm  *NetMutex
		err error
	}
	ch := make(chan opened, 1)
	start := time.Now()
	go func() {
		nm, err := Open(2, 10*time.Second, []string{addr}, nil)
		ch <- opened{nm, err}
	}()
	time.Sleep(200 * time.Millisecond)
	startServer(t, func(c *server.Config) { c.ListenAddr = addr })
	o := <-ch
	require.NoError(t, o.err, "Open")
	defer o.nm.Close(1, testTimeout)
	require.LessOrEqual(t, time.Since(start), 5*time.Second, "Open's time, the server up after 200ms")
}

// TestSessionKeptAlive: an idle client's session outlives the session timeout, because
// the client sends TOUCH by itself.
func TestSessionKeptAlive(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.SessionTimeout = 300 * time.Millisecond })
	nm := openClient(t, srv, nil)
	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", 10*time.Second))
	time.Sleep(time.Second)
	assert.NoError(t, nm.Update(testRetries, testTimeout, &l, 10*time.Second), "Update after an idle second")
	assert.Zero(t, srv.Stats().Isolations, "isolations")
}

// TestFailover: when the server in use stops answering, the client moves to another
// server of the cluster it was told about.
func TestFailover(t *testing.T) {
	b := startServer(t, nil)
	a := startServer(t, func(c *server.Config) {
		c.ServerID = 1
		c.Servers = []wire.Server{{ID: 2, Addr: b.Addr().String()}, {ID: 1, Addr: c.ListenAddr}}
	})
	nm, err := Open(testRetries, testTimeout, []string{a.Addr().String()}, nil)
	require.NoError(t, err)
	defer nm.Close(1, testTimeout)
	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Second))
	a.Abort()
	require.ErrorIs(t, nm.Lock(2, 50*time.Millisecond, &Lock{}, "k2", time.Second), ErrTooMuchRetries, "Lock on a dead server")
	var l2 Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l2, "k2", time.Second), "Lock after failover")
	assert.Equal(t, uint64(1), b.Stats().Grants, "locks granted by the other server")
	assert.ErrorIs(t, nm.Update(testRetries, testTimeout, &l, time.Second), ErrLockLost, "lock held on the dead server")
}

// TestCloseReleasesSockets: no socket outlives Close, also for the addresses Open tried
// and gave up on.
func TestCloseReleasesSockets(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("no /proc/self/fd on this system")
	}
	srv := startServer(t, nil)
	countFDs := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		require.NoError(t, err)
		return len(entries)
	}
	before := countFDs()
	for i := 0; i < 5; i++ {
		nm, err := Open(testRetries, 100*time.Millisecond, []string{deadAddr(t), srv.Addr().String()}, nil)
		require.NoError(t, err)
		var l Lock
		require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "fd", time.Second))
		require.NoError(t, nm.Close(testRetries, testTimeout))
	}
	require.Equal(t, before, countFDs(), "open file descriptors after 5 Open/Close")
}

// TestRetransmitWindow: a request is not sent again once the server's retransmit window
// since its first sending has passed, whatever retries the caller allowed.
func TestRetransmitWindow(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.RetransmitWindow = 150 * time.Millisecond })
	nm := openClient(t, srv, nil)
	srv.Abort()
	start := time.Now()
	var l Lock
	require.ErrorIs(t, nm.Lock(1000, 20*time.Millisecond, &l, "k", time.Second), ErrTooMuchRetries, "Lock to a dead server")
	el := time.Since(start)
	require.GreaterOrEqual(t, el, 150*time.Millisecond, "gave up before the 150ms window")
	require.LessOrEqual(t, el, 10*time.Second, "gave up late: want the 150ms window, not 1000 attempts of 20ms")
	t.Logf("elapsed %v, %d retransmits", time.Since(start), nm.Stats().Retransmits)
	require.LessOrEqual(t, nm.Stats().Retransmits, uint64(20), "retransmissions inside a 150ms window of 20ms attempts")
}
