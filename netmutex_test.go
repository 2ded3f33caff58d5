package netmutex

import (
	"context"
	"errors"
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
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestLockUpdateUnlock(t *testing.T) {
	srv := startServer(t, nil)
	nm := openClient(t, srv, nil)

	var l Lock
	if l.Key() != "" || l.FenceID() != 0 {
		t.Fatal("zero Lock is not empty")
	}
	if err := nm.Lock(testRetries, testTimeout, &l, "job:1", time.Second); err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if l.Key() != "job:1" || l.FenceID() == 0 {
		t.Fatalf("after Lock: key %q fence %d", l.Key(), l.FenceID())
	}
	fence := l.FenceID()
	if err := nm.Update(testRetries, testTimeout, &l, 2*time.Second); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if l.FenceID() != fence {
		t.Fatalf("Update changed the fence: %d -> %d", fence, l.FenceID())
	}
	if err := nm.Unlock(testRetries, testTimeout, &l); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if l.Key() != "" {
		t.Fatal("Unlock left the Lock holding a key")
	}
	// A Lock is reusable after Unlock, and the new grant has a greater fence.
	if err := nm.Lock(testRetries, testTimeout, &l, "job:1", time.Second); err != nil {
		t.Fatalf("Lock again: %v", err)
	}
	if l.FenceID() <= fence {
		t.Fatalf("fence did not grow: %d then %d", fence, l.FenceID())
	}
	if err := nm.Unlock(testRetries, testTimeout, &l); err != nil {
		t.Fatal(err)
	}
}

func TestArgumentErrors(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.MaxTTL = 10 * time.Second })
	nm := openClient(t, srv, nil)
	long := strings.Repeat("k", MaxKeySize+1)

	var held Lock
	if err := nm.Lock(testRetries, testTimeout, &held, "held", time.Second); err != nil {
		t.Fatal(err)
	}
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
			if err := tc.call(); err != tc.err {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
		})
	}
	if after := nm.Stats().FramesOut; after != before {
		t.Fatalf("bad arguments sent %d frames", after-before)
	}
	// The held lock is untouched by all of that.
	if err := nm.Update(testRetries, testTimeout, &held, time.Second); err != nil {
		t.Fatalf("held lock after bad calls: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(1, testTimeout, nil, nil); err != ErrNoServers {
		t.Fatalf("no addresses: %v", err)
	}
	long := &Options{IsolationInfo: strings.Repeat("i", MaxIsolationInfo+1)}
	if _, err := Open(1, testTimeout, []string{"127.0.0.1:1"}, long); err != ErrLongIsolationInfo {
		t.Fatalf("long isolation info: %v", err)
	}
	dead := deadAddr(t)
	start := time.Now()
	if _, err := Open(2, 50*time.Millisecond, []string{dead}, nil); err != ErrNoServers {
		t.Fatalf("dead server: %v", err)
	}
	if time.Since(start) < 100*time.Millisecond {
		t.Fatal("Open gave up before its attempts were spent")
	}
}

// deadAddr returns a loopback UDP address where nothing answers.
func deadAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

func TestOpenDeadThenLive(t *testing.T) {
	srv := startServer(t, nil)
	nm, err := Open(testRetries, 100*time.Millisecond, []string{deadAddr(t), srv.Addr().String()}, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer nm.Close(1, testTimeout)
	var l Lock
	if err := nm.Lock(testRetries, testTimeout, &l, "k", time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestOpenFollowsRedirect(t *testing.T) {
	leader := startServer(t, nil)
	follower := startServer(t, func(c *server.Config) {
		c.ServerID = 2
		c.Redirect = &wire.Server{ID: 1, Addr: leader.Addr().String()}
	})
	nm, err := Open(testRetries, testTimeout, []string{follower.Addr().String()}, nil)
	if err != nil {
		t.Fatalf("Open through a follower: %v", err)
	}
	defer nm.Close(1, testTimeout)
	var l Lock
	if err := nm.Lock(testRetries, testTimeout, &l, "k", time.Second); err != nil {
		t.Fatal(err)
	}
	if leader.Stats().Grants != 1 {
		t.Fatalf("leader granted %d locks, want 1", leader.Stats().Grants)
	}
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
				if err != nil {
					t.Error(err)
					return
				}
				if holders.Add(1) != 1 {
					t.Error("two holders at once")
				}
				mu.Lock()
				if l.FenceID() <= lastFence {
					t.Errorf("fence %d after %d", l.FenceID(), lastFence)
				}
				lastFence = l.FenceID()
				mu.Unlock()
				grants.Add(1)
				holders.Add(-1)
				if err := nm.Unlock(testRetries, testTimeout, &l); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if grants.Load() == 0 || refusals.Load() == 0 {
		t.Fatalf("no contention seen: %d grants, %d refusals", grants.Load(), refusals.Load())
	}
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
	if err := nm.Lock(testRetries, testTimeout, &l, "short", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// The key is unavailable to others until the isolation command has run.
	waitFor(t, 5*time.Second, func() bool {
		b, err := os.ReadFile(out)
		return err == nil && string(b) == info
	})
	if err := nm.Update(testRetries, testTimeout, &l, time.Second); err != ErrIsolated {
		t.Fatalf("Update after expiry: %v, want ErrIsolated", err)
	}
	var l2 Lock
	if err := nm.Lock(testRetries, testTimeout, &l2, "fresh", time.Second); err != ErrIsolated {
		t.Fatalf("Lock after isolation: %v, want ErrIsolated", err)
	}
	var lo Lock
	waitFor(t, 5*time.Second, func() bool {
		return other.Lock(testRetries, testTimeout, &lo, "short", time.Second) == nil
	})
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnlockAll(t *testing.T) {
	srv := startServer(t, nil)
	holder := openClient(t, srv, nil)
	admin := openClient(t, srv, nil)
	var l Lock
	if err := holder.Lock(testRetries, testTimeout, &l, "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := admin.UnlockAll(testRetries, testTimeout); err != nil {
		t.Fatal(err)
	}
	if err := holder.Update(testRetries, testTimeout, &l, time.Minute); err != ErrIsolated {
		t.Fatalf("holder after UnlockAll: %v, want ErrIsolated", err)
	}
	var l2 Lock
	waitFor(t, 5*time.Second, func() bool {
		return admin.Lock(testRetries, testTimeout, &l2, "k", time.Second) == nil
	})
}

func TestCloseThenErrDisconnected(t *testing.T) {
	srv := startServer(t, nil)
	nm, err := Open(testRetries, testTimeout, []string{srv.Addr().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var l Lock
	if err := nm.Lock(testRetries, testTimeout, &l, "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := nm.Close(testRetries, testTimeout); err != nil {
		t.Fatalf("Close: %v", err)
	}
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
		if err != ErrDisconnected {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	// Close ended the session, so its lock is free at once.
	other := openClient(t, srv, nil)
	var l2 Lock
	if err := other.Lock(testRetries, testTimeout, &l2, "k", time.Second); err != nil {
		t.Fatalf("key of a closed session: %v", err)
	}
}

func TestContextForms(t *testing.T) {
	srv := startServer(t, nil)
	nm, err := OpenContext(context.Background(), []string{srv.Addr().String()}, &Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var l Lock
	if err := nm.LockContext(ctx, &l, "ctx", time.Second); err != nil {
		t.Fatal(err)
	}
	var l2 Lock
	if err := nm.LockContext(ctx, &l2, "ctx", time.Second); err != ErrLocked {
		t.Fatalf("second LockContext: %v", err)
	}
	if err := nm.UpdateContext(ctx, &l, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := nm.UnlockContext(ctx, &l); err != nil {
		t.Fatal(err)
	}
	if err := nm.UnlockAllContext(ctx); err != nil {
		t.Fatal(err)
	}
	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	if err := nm.LockContext(cancelled, &l, "ctx", time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
	if err := nm.CloseContext(ctx); err != nil {
		t.Fatal(err)
	}
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
	if err := nm.LockContext(ctx, &l, "k", time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LockContext to a dead server: %v", err)
	}
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Fatalf("gave up after %v, before the deadline", el)
	}
	err := nm.Lock(3, 20*time.Millisecond, &l, "k", time.Second)
	if err != ErrTooMuchRetries {
		t.Fatalf("Lock to a dead server: %v", err)
	}
	var te interface{ Timeout() bool }
	if !errors.As(err, &te) || !te.Timeout() {
		t.Fatal("ErrTooMuchRetries does not report Timeout()")
	}
	if nm.Stats().Retransmits == 0 {
		t.Fatal("no retransmission counted")
	}
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
	if o.err != nil {
		t.Fatalf("Open: %v", o.err)
	}
	defer o.nm.Close(1, testTimeout)
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("Open took %v after the server came up", el)
	}
}

// TestSessionKeptAlive: an idle client's session outlives the session timeout, because
// the client sends TOUCH by itself.
func TestSessionKeptAlive(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.SessionTimeout = 300 * time.Millisecond })
	nm := openClient(t, srv, nil)
	var l Lock
	if err := nm.Lock(testRetries, testTimeout, &l, "k", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := nm.Update(testRetries, testTimeout, &l, 10*time.Second); err != nil {
		t.Fatalf("Update after an idle second: %v", err)
	}
	if st := srv.Stats(); st.Isolations != 0 {
		t.Fatalf("%d isolations", st.Isolations)
	}
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
	if err != nil {
		t.Fatal(err)
	}
	defer nm.Close(1, testTimeout)
	var l Lock
	if err := nm.Lock(testRetries, testTimeout, &l, "k", time.Second); err != nil {
		t.Fatal(err)
	}
	a.Abort()
	if err := nm.Lock(2, 50*time.Millisecond, &Lock{}, "k2", time.Second); err != ErrTooMuchRetries {
		t.Fatalf("Lock on a dead server: %v", err)
	}
	var l2 Lock
	if err := nm.Lock(testRetries, testTimeout, &l2, "k2", time.Second); err != nil {
		t.Fatalf("Lock after failover: %v", err)
	}
	if b.Stats().Grants != 1 {
		t.Fatalf("the other server granted %d locks, want 1", b.Stats().Grants)
	}
	if err := nm.Update(testRetries, testTimeout, &l, time.Second); err != ErrLockLost {
		t.Fatalf("lock held on the dead server: %v, want ErrLockLost", err)
	}
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
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	before := countFDs()
	for i := 0; i < 5; i++ {
		nm, err := Open(testRetries, 100*time.Millisecond, []string{deadAddr(t), srv.Addr().String()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var l Lock
		if err := nm.Lock(testRetries, testTimeout, &l, "fd", time.Second); err != nil {
			t.Fatal(err)
		}
		if err := nm.Close(testRetries, testTimeout); err != nil {
			t.Fatal(err)
		}
	}
	if after := countFDs(); after != before {
		t.Fatalf("%d file descriptors before, %d after", before, after)
	}
}

// TestRetransmitWindow: a request is not sent again once the server's retransmit window
// since its first sending has passed, whatever retries the caller allowed.
func TestRetransmitWindow(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.RetransmitWindow = 150 * time.Millisecond })
	nm := openClient(t, srv, nil)
	srv.Abort()
	start := time.Now()
	var l Lock
	if err := nm.Lock(1000, 20*time.Millisecond, &l, "k", time.Second); err != ErrTooMuchRetries {
		t.Fatalf("Lock to a dead server: %v", err)
	}
	if el := time.Since(start); el < 150*time.Millisecond || el > 10*time.Second {
		t.Fatalf("gave up after %v: want the 150ms window, not 1000 attempts of 20ms", el)
	}
	t.Logf("elapsed %v, %d retransmits", time.Since(start), nm.Stats().Retransmits)
	if n := nm.Stats().Retransmits; n > 20 {
		t.Fatalf("%d retransmissions inside a 150ms window of 20ms attempts", n)
	}
}
