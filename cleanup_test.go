package netmutex

import (
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
