package netmutex

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/faultproxy"
	"github.com/netmutex/netmutex/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestErrorTaxonomy(t *testing.T) {
	for _, err := range []error{ErrLocked, ErrLockDelay, ErrTooManyWaiters} {
		assert.ErrorIs(t, err, ErrLocked, "%v: try later", err)
		assert.NotErrorIs(t, err, ErrIsolated)
	}
	for _, err := range []error{ErrIsolated, ErrLockLost, ErrLeaseExpired} {
		assert.ErrorIs(t, err, ErrIsolated, "%v: stop", err)
		assert.NotErrorIs(t, err, ErrLocked)
	}
	assert.NotErrorIs(t, ErrLocked, ErrLockDelay, "the kinds are wider than their members")
}

// queued starts an Acquire of key on nm in a goroutine and returns its result channel.
func queued(nm *NetMutex, ctx context.Context, l *Lock, key string) <-chan error {
	return queuedTTL(nm, ctx, l, key, time.Minute)
}

func queuedTTL(nm *NetMutex, ctx context.Context, l *Lock, key string, ttl time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() { done <- nm.Acquire(ctx, l, key, ttl) }()
	return done
}

// TestAcquireFIFO: waiters are granted in the order they queued, each as soon as the
// one before unlocks, and each grant gets a greater fence.
func TestAcquireFIFO(t *testing.T) {
	srv := startServer(t, nil)
	holder := openClient(t, srv, nil)
	var held Lock
	require.NoError(t, holder.Lock(testRetries, testTimeout, &held, "fifo", time.Minute))
	last := held.FenceID()

	const n = 5
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	clients := make([]*NetMutex, n)
	locks := make([]Lock, n)
	dones := make([]<-chan error, n)
	for i := range clients {
		clients[i] = openClient(t, srv, nil)
		dones[i] = queued(clients[i], ctx, &locks[i], "fifo")
		time.Sleep(30 * time.Millisecond) // let it reach the queue before the next
	}
	require.NoError(t, holder.Unlock(testRetries, testTimeout, &held))
	for i := range clients {
		select {
		case err := <-dones[i]:
			require.NoError(t, err, "waiter %d", i)
		case <-time.After(10 * time.Second):
			t.Fatalf("waiter %d never granted", i)
		}
		for j := i + 1; j < n; j++ {
			select {
			case err := <-dones[j]:
				t.Fatalf("waiter %d granted (%v) before waiter %d unlocked", j, err, i)
			default:
			}
		}
		assert.Greater(t, locks[i].FenceID(), last, "fences grow with every grant")
		last = locks[i].FenceID()
		require.NoError(t, clients[i].Unlock(testRetries, testTimeout, &locks[i]))
	}
}

// TestAcquireCancelled: a waiter that gives up returns its context's error and has left
// the queue, whether it gave up before the grant or while the grant was in flight: the
// key is never left granted to it, and nobody is isolated.
func TestAcquireCancelled(t *testing.T) {
	srv := startServer(t, nil)
	holder := openClient(t, srv, nil)
	waiter := openClient(t, srv, nil)
	other := openClient(t, srv, nil)

	t.Run("before the grant", func(t *testing.T) {
		var held, w Lock
		require.NoError(t, holder.Lock(testRetries, testTimeout, &held, "cancel-1", time.Minute))
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		defer cancel()
		err := waiter.Acquire(ctx, &w, "cancel-1", time.Minute)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Empty(t, w.Key())
		require.NoError(t, holder.Unlock(testRetries, testTimeout, &held))
		var o Lock
		waitFor(t, 2*time.Second, func() bool { return other.Lock(testRetries, testTimeout, &o, "cancel-1", time.Minute) == nil })
		require.NoError(t, other.Unlock(testRetries, testTimeout, &o))
	})
	t.Run("while the grant is in flight", func(t *testing.T) {
		for i := 0; i < 20; i++ {
			key := "cancel-2-" + strconv.Itoa(i)
			var held, w Lock
			require.NoError(t, holder.Lock(testRetries, testTimeout, &held, key, time.Minute))
			ctx, cancel := context.WithCancel(context.Background())
			done := queued(waiter, ctx, &w, key)
			time.Sleep(20 * time.Millisecond)
			go func() { _ = holder.Unlock(testRetries, testTimeout, &held) }()
			time.Sleep(time.Duration(i%5) * 100 * time.Microsecond) // around the handoff
			cancel()
			err := <-done
			if err == nil {
				require.NoError(t, waiter.Unlock(testRetries, testTimeout, &w)) // it won the race
			} else {
				require.ErrorIs(t, err, context.Canceled)
			}
			var o Lock
			waitFor(t, 2*time.Second, func() bool { return other.Lock(testRetries, testTimeout, &o, key, time.Minute) == nil })
			require.NoError(t, other.Unlock(testRetries, testTimeout, &o))
		}
	})
	assert.Zero(t, srv.Stats().Isolations, "a cancelled waiter's grant expired instead of being released")
}

// TestAcquireAfterIsolation: a holder whose lock expires hands the key to the next
// waiter only once the isolation command has ended.
func TestAcquireAfterIsolation(t *testing.T) {
	ended := filepath.Join(t.TempDir(), "ended")
	srv := startServer(t, func(c *server.Config) {
		c.IsolateCmd = "sleep 0.3; date +%s%N > " + ended
	})
	holder := openClient(t, srv, nil)
	waiter := openClient(t, srv, nil)
	var held, w Lock
	require.NoError(t, holder.Lock(testRetries, testTimeout, &held, "iso", 100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, waiter.Acquire(ctx, &w, "iso", time.Minute))
	granted := time.Now().UnixNano()
	b, err := os.ReadFile(ended)
	require.NoError(t, err, "granted before the isolation command ended")
	end, err := strconv.ParseInt(string(b[:len(b)-1]), 10, 64)
	require.NoError(t, err)
	assert.Less(t, end, granted, "granted before the isolation command ended")
	assert.Greater(t, w.FenceID(), held.FenceID())
}

// TestAcquireThroughRestart: a waiter outlives a crash of the server: it queues again on
// its new session, waits out the lock-delay, and is granted.
func TestAcquireThroughRestart(t *testing.T) {
	rs := newRestartable(t, 300*time.Millisecond)
	holder := openClient(t, rs.srv, nil)
	waiter := openClient(t, rs.srv, nil)
	var held, w Lock
	require.NoError(t, holder.Lock(testRetries, testTimeout, &held, "restart", 200*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	done := queuedTTL(waiter, ctx, &w, "restart", 200*time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	rs.restart(false) // a crash: the next start has a lock-delay
	require.True(t, rs.srv.LockDelay())
	start := time.Now()
	require.NoError(t, <-done)
	assert.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond, "granted inside the lock-delay")
	assert.Greater(t, w.FenceID(), held.FenceID())
	require.NoError(t, waiter.Unlock(testRetries, testTimeout, &w))
}

// TestAcquireManyAgainstSingles: a multi-key waiter is granted both keys at once, before
// single-key waiters that came after it, and two multi-key waiters over the same keys in
// opposite orders do not deadlock.
func TestAcquireManyAgainstSingles(t *testing.T) {
	srv := startServer(t, nil)
	a, b := openClient(t, srv, nil), openClient(t, srv, nil)
	multi, single := openClient(t, srv, nil), openClient(t, srv, nil)
	var la, lb Lock
	require.NoError(t, a.Lock(testRetries, testTimeout, &la, "m1", time.Minute))
	require.NoError(t, b.Lock(testRetries, testTimeout, &lb, "m2", time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var m1, m2, s1 Lock
	multiDone := make(chan error, 1)
	go func() { multiDone <- multi.AcquireMany(ctx, []*Lock{&m1, &m2}, []string{"m1", "m2"}, time.Minute) }()
	time.Sleep(30 * time.Millisecond)
	singleDone := queued(single, ctx, &s1, "m1")
	time.Sleep(30 * time.Millisecond)
	require.NoError(t, a.Unlock(testRetries, testTimeout, &la)) // m1 free, but kept for the multi waiter
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-singleDone:
		t.Fatalf("a later single waiter took m1 (%v) ahead of the multi-key waiter", err)
	case err := <-multiDone:
		t.Fatalf("multi-key waiter granted (%v) while m2 was held", err)
	default:
	}
	require.NoError(t, b.Unlock(testRetries, testTimeout, &lb))
	require.NoError(t, <-multiDone)
	assert.Equal(t, "m1", m1.Key())
	assert.Equal(t, "m2", m2.Key())
	assert.Equal(t, m1.FenceID()+1, m2.FenceID(), "one fence per key, consecutive")
	require.NoError(t, multi.Unlock(testRetries, testTimeout, &m1))
	require.NoError(t, <-singleDone)
	require.NoError(t, single.Unlock(testRetries, testTimeout, &s1))
	require.NoError(t, multi.Unlock(testRetries, testTimeout, &m2))

	// Opposite orders, many rounds: no deadlock.
	var wg sync.WaitGroup
	for i, keys := range [][]string{{"d1", "d2"}, {"d2", "d1"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nm := []*NetMutex{a, b}[i]
			for r := 0; r < 20; r++ {
				var x, y Lock
				if !assert.NoError(t, nm.AcquireMany(ctx, []*Lock{&x, &y}, keys, time.Minute)) {
					return
				}
				assert.NoError(t, nm.Unlock(testRetries, testTimeout, &x))
				assert.NoError(t, nm.Unlock(testRetries, testTimeout, &y))
			}
		}()
	}
	wg.Wait()
}

// TestHoldLeaseEndsFirst: when the server stops answering, fn's context ends with
// ErrLeaseExpired strictly before the server could let the lock expire (the last
// renewal's send time plus the TTL), and Hold reports it.
func TestHoldLeaseEndsFirst(t *testing.T) {
	srv := startServer(t, nil)
	p, err := faultproxy.New(faultproxy.Config{Upstream: srv.Addr().String(), Logf: t.Logf})
	require.NoError(t, err)
	defer p.Close()
	nm, err := Open(testRetries, testTimeout, []string{p.Addr().String()}, nil)
	require.NoError(t, err)
	defer nm.Close(1, testTimeout)

	const ttl = 600 * time.Millisecond
	var cut, ended time.Time
	var cause error
	err = nm.Hold(context.Background(), "held", ttl, func(ctx context.Context, l *Lock) error {
		time.Sleep(ttl) // renewals land meanwhile
		require.NoError(t, ctx.Err(), "renewals keep the lease")
		cut = time.Now()
		p.Blackhole(faultproxy.ToServer, true) // nothing reaches the server any more
		<-ctx.Done()
		ended, cause = time.Now(), context.Cause(ctx)
		return nil
	})
	require.ErrorIs(t, err, ErrLeaseExpired)
	require.ErrorIs(t, cause, ErrLeaseExpired)
	assert.True(t, errors.Is(err, ErrIsolated), "a lost lease reads as a lost lock")
	// The server renewed last before cut, so it expires the lock no earlier than cut + ttl
	// minus a round trip; fn was stopped before that, by at least the margin.
	assert.Less(t, ended.Sub(cut), ttl-holdMargin(ttl)/2, "fn's context ended after the server could expire the lock")
}

// TestHoldRunsAndUnlocks: Hold runs fn under the lock and releases it afterwards.
func TestHoldRunsAndUnlocks(t *testing.T) {
	srv := startServer(t, nil)
	nm := openClient(t, srv, nil)
	other := openClient(t, srv, nil)
	ran := false
	require.NoError(t, nm.Hold(context.Background(), "job", time.Second, func(ctx context.Context, l *Lock) error {
		ran = true
		assert.Equal(t, "job", l.Key())
		assert.NotZero(t, l.FenceID())
		var o Lock
		assert.ErrorIs(t, other.Lock(testRetries, testTimeout, &o, "job", time.Second), ErrLocked)
		return nil
	}))
	assert.True(t, ran)
	var o Lock
	require.NoError(t, other.Lock(testRetries, testTimeout, &o, "job", time.Second), "unlocked after fn")
	boom := errors.New("boom")
	assert.Equal(t, boom, nm.Hold(context.Background(), "job2", time.Second, func(context.Context, *Lock) error { return boom }))
}

// TestSenderSleepsWhileParked: a connection whose only request waits in a key's queue
// lets its send loop sleep until that request's next copy is due, instead of waking to
// scan every millisecond (a wake-up a millisecond per idle connection is what a fleet of
// connections with a request outstanding paid).
func TestSenderSleepsWhileParked(t *testing.T) {
	srv := startServer(t, nil)
	holder := openClient(t, srv, nil)
	var held Lock
	require.NoError(t, holder.Lock(testRetries, testTimeout, &held, "sleepy", time.Minute))

	waiter := openClient(t, srv, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var l Lock
	done := queued(waiter, ctx, &l, "sleepy")
	time.Sleep(100 * time.Millisecond) // queued, and the QUEUED seen by the scan
	c := waiter.conn.Load()
	before := c.stats.senderWakes.Load()
	time.Sleep(500 * time.Millisecond)
	wakes := c.stats.senderWakes.Load() - before
	// Two or three parked copies (every 250 ms) and their replies; a scan every
	// millisecond would be about 500.
	assert.LessOrEqual(t, wakes, uint64(25), "send loop wake-ups in 500 ms with one parked request")

	require.NoError(t, holder.Unlock(testRetries, testTimeout, &held))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter was not granted the key")
	}
	require.NoError(t, waiter.Unlock(testRetries, testTimeout, &l))
}

// TestQueuedNoticedAtOnce: a waiting LOCK answered QUEUED is parked and paced by its
// TTL from then on, not from when its attempt would have ended: a lost pushed grant is
// recovered within a copy's period (an eighth of the TTL here), long before the lease
// could run out unseen. The QUEUED must wake the send loop, which no longer scans every
// millisecond on its own.
func TestQueuedNoticedAtOnce(t *testing.T) {
	srv := startServer(t, nil)
	p, err := faultproxy.New(faultproxy.Config{Upstream: srv.Addr().String(), Logf: t.Logf})
	require.NoError(t, err)
	defer p.Close()
	const attempt = 2 * time.Second // far longer than a parked copy's period (100ms)
	waiter, err := Open(testRetries, attempt, []string{p.Addr().String()}, &Options{Timeout: attempt})
	require.NoError(t, err)
	defer waiter.Close(1, testTimeout)
	holder := openClient(t, srv, nil)
	var held Lock
	require.NoError(t, holder.Lock(testRetries, testTimeout, &held, "queued", time.Minute))
	time.Sleep(300 * time.Millisecond) // the waiter's send loop asleep: what it armed while connecting has rung

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var l Lock
	c := waiter.conn.Load()
	heard := c.stats.framesIn.Load()
	done := queuedTTL(waiter, ctx, &l, "queued", 800*time.Millisecond)
	waitFor(t, 5*time.Second, func() bool { return c.stats.framesIn.Load() > heard }) // QUEUED came back
	p.Blackhole(faultproxy.ToClient, true)
	require.NoError(t, holder.Unlock(testRetries, testTimeout, &held))
	waitFor(t, 5*time.Second, func() bool { return srv.Stats().Grants == 2 }) // pushed, and lost
	p.Blackhole(faultproxy.ToClient, false)
	lost := time.Now()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter never learnt of its grant")
	}
	took := time.Since(lost)
	t.Logf("the lost grant was recovered %v after the reply path healed", took)
	require.Less(t, took, attempt/2, "the parked copies waited for the attempt's end")
	require.NoError(t, waiter.Unlock(testRetries, testTimeout, &l))
	require.Zero(t, srv.Stats().Isolations)
}
