package netmutex

import (
	"context"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/faultproxy"
	"github.com/stretchr/testify/require"
)

// TestGivenUpLockIsReleased: a LOCK that was granted but whose every reply was lost
// fails with ErrTooMuchRetries, and the client then releases it, so the key is free at
// once instead of expiring later and isolating a client that believes it holds nothing.
func TestGivenUpLockIsReleased(t *testing.T) {
	srv := startServer(t, nil)
	p, err := faultproxy.New(faultproxy.Config{Upstream: srv.Addr().String(), Logf: t.Logf})
	require.NoError(t, err)
	defer p.Close()
	nm, err := Open(testRetries, testTimeout, []string{p.Addr().String()}, nil)
	require.NoError(t, err)
	defer nm.Close(1, testTimeout)
	other := openClient(t, srv, nil)

	p.Blackhole(faultproxy.ToClient, true) // the grant happens; its replies vanish
	var l Lock
	require.ErrorIs(t, nm.Lock(2, 50*time.Millisecond, &l, "orphan", time.Minute), ErrTooMuchRetries, "Lock with its replies lost")
	require.Equal(t, uint64(1), srv.Stats().Grants, "grants: want the 1 whose replies were lost")
	p.Blackhole(faultproxy.ToClient, false)
	var lo Lock
	waitFor(t, 5*time.Second, func() bool {
		return other.Lock(testRetries, testTimeout, &lo, "orphan", time.Second) == nil
	})
	require.Zero(t, srv.Stats().Isolations, "isolations: the orphan expired instead of being released")
}

// TestCancelledLockIsReleasedPromptly: a LOCK whose context ends after it was sent, and
// whose grant was lost, is released by the clean-up UNLOCK at once, not when the LOCK's
// attempt would have ended: the cancel wakes the sleeping send loop, which no longer
// scans every millisecond on its own.
func TestCancelledLockIsReleasedPromptly(t *testing.T) {
	srv := startServer(t, nil)
	p, err := faultproxy.New(faultproxy.Config{Upstream: srv.Addr().String(), Logf: t.Logf})
	require.NoError(t, err)
	defer p.Close()
	const attempt = 2 * time.Second // far longer than the release may take
	nm, err := Open(testRetries, attempt, []string{p.Addr().String()}, &Options{Timeout: attempt})
	require.NoError(t, err)
	defer nm.Close(1, testTimeout)
	other := openClient(t, srv, nil)

	p.Blackhole(faultproxy.ToClient, true) // the grant happens; its reply vanishes
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var l Lock
	go func() { done <- nm.LockContext(ctx, &l, "cancelled", time.Minute) }()
	waitFor(t, 5*time.Second, func() bool { return srv.Stats().Grants == 1 })
	p.Blackhole(faultproxy.ToClient, false)
	time.Sleep(300 * time.Millisecond) // the send loop asleep until the attempt's end
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	cancelled := time.Now()
	var lo Lock
	waitFor(t, 5*time.Second, func() bool {
		return other.Lock(testRetries, testTimeout, &lo, "cancelled", time.Second) == nil
	})
	took := time.Since(cancelled)
	t.Logf("the key was free %v after the cancel", took)
	require.Less(t, took, attempt/2, "the clean-up UNLOCK waited for the LOCK's attempt to end")
	require.Zero(t, srv.Stats().Isolations)
}
