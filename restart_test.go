package netmutex

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
	"github.com/netmutex/netmutex/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// restartable is a real server that can be stopped and started again on the same
// address and data directory.
type restartable struct {
	t   *testing.T
	cfg server.Config
	srv *server.Server
}

func newRestartable(t *testing.T, maxTTL time.Duration) *restartable {
	cfg := server.DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.MaxTTL = maxTTL
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r := &restartable{t: t, cfg: cfg}
	r.start()
	r.cfg.ListenAddr = r.srv.Addr().String()
	t.Cleanup(func() { r.srv.Close() })
	return r
}

func (r *restartable) start() {
	srv, err := server.New(r.cfg)
	require.NoError(r.t, err)
	r.srv = srv
}

// restart stops the server, cleanly or as a crash would, and starts it again.
func (r *restartable) restart(clean bool) {
	if clean {
		r.srv.Close()
	} else {
		r.srv.Abort()
	}
	r.start()
}

func TestCleanRestartWithoutLocks(t *testing.T) {
	rs := newRestartable(t, 10*time.Second)
	nm := openClient(t, rs.srv, nil)
	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Second))
	fence := l.FenceID()
	require.NoError(t, nm.Unlock(testRetries, testTimeout, &l))
	rs.restart(true)
	require.False(t, rs.srv.LockDelay(), "lock-delay after a clean stop with no lock held")
	// The NetMutex outlives the restart: a new session, at once usable.
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Second), "Lock after restart")
	require.Greater(t, l.FenceID(), fence, "fence across a restart")
}

func testRestartWithLock(t *testing.T, clean bool) {
	const maxTTL = 400 * time.Millisecond
	rs := newRestartable(t, maxTTL)
	nm := openClient(t, rs.srv, nil)
	var held Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &held, "held", maxTTL))
	fence := held.FenceID()
	restarted := time.Now()
	rs.restart(clean)
	require.True(t, rs.srv.LockDelay(), "no lock-delay although a lock was held")
	// Nobody can take the key the old holder may still believe it has.
	var l Lock
	require.ErrorIs(t, nm.Lock(testRetries, testTimeout, &l, "held", maxTTL), ErrLockDelay, "Lock during lock-delay")
	// The lock from before the restart is reported lost.
	require.ErrorIs(t, nm.Update(testRetries, testTimeout, &held, maxTTL), ErrLockLost, "Update of a lock from before the restart")
	require.ErrorIs(t, nm.Unlock(testRetries, testTimeout, &held), ErrNotLocked, "Unlock after the loss was reported")
	waitFor(t, 5*time.Second, func() bool {
		return nm.Lock(testRetries, testTimeout, &l, "held", maxTTL) == nil
	})
	require.GreaterOrEqual(t, time.Since(restarted), maxTTL, "granted inside the lock-delay")
	require.Greater(t, l.FenceID(), fence, "fence across a restart")
}

func TestUncleanRestartLockDelay(t *testing.T)  { testRestartWithLock(t, false) }
func TestCleanRestartWithLockHeld(t *testing.T) { testRestartWithLock(t, true) }

// TestUnlockAfterRestart checks the Unlock side of a lost lock.
func TestUnlockAfterRestart(t *testing.T) {
	rs := newRestartable(t, 200*time.Millisecond)
	nm := openClient(t, rs.srv, nil)
	var held Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &held, "k", 200*time.Millisecond))
	rs.restart(false)
	// The UNLOCK itself meets the new server, which no longer knows the session.
	require.ErrorIs(t, nm.Unlock(testRetries, testTimeout, &held), ErrLockLost, "Unlock of a lock from before the restart")
}

// TestRedirectMidSession: the server a client uses becomes a follower of a leader the
// client was never told of. Its requests draw NOT_LEADER, which no caller sees: the
// connection asks the follower who leads (a CONNECT without cookie, answered REDIRECT)
// and moves its socket there. That leader never knew the session (nothing replicates it
// here), so the Lock goes through on a new session, within the same call, as it would
// after a restart; the lock held on the old server is reported lost.
func TestRedirectMidSession(t *testing.T) {
	leader := startServer(t, nil)
	rs := newRestartable(t, 10*time.Second)
	nm := openClient(t, rs.srv, nil)
	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Second))
	_, s := session(nm)
	rs.cfg.Redirect = &wire.Server{ID: 9, Addr: leader.Addr().String()}
	rs.restart(true)
	var l2 Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l2, "k2", time.Second), "Lock through the follower")
	require.Equal(t, uint64(1), leader.Stats().Grants, "leader's grants")
	c, s2 := session(nm)
	assert.Equal(t, leader.Addr().String(), c.currentAddr(), "on the leader")
	assert.NotEqual(t, s, s2, "the session the leader never knew")
	assert.Positive(t, nm.Stats().NotLeader, "NOT_LEADER answers")
	require.ErrorIs(t, nm.Unlock(testRetries, testTimeout, &l), ErrLockLost, "lock held on the old server")
	require.NoError(t, nm.Unlock(testRetries, testTimeout, &l2))
}
