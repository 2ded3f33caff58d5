package netmutex

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
	"github.com/netmutex/netmutex/server"
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
	if err != nil {
		r.t.Fatal(err)
	}
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
	if err := nm.Lock(testRetries, testTimeout, &l, "k", time.Second); err != nil {
		t.Fatal(err)
	}
	fence := l.FenceID()
	if err := nm.Unlock(testRetries, testTimeout, &l); err != nil {
		t.Fatal(err)
	}
	rs.restart(true)
	if rs.srv.LockDelay() {
		t.Fatal("lock-delay after a clean stop with no lock held")
	}
	// The NetMutex outlives the restart: a new session, at once usable.
	if err := nm.Lock(testRetries, testTimeout, &l, "k", time.Second); err != nil {
		t.Fatalf("Lock after restart: %v", err)
	}
	if l.FenceID() <= fence {
		t.Fatalf("fence went from %d to %d across a restart", fence, l.FenceID())
	}
}

func testRestartWithLock(t *testing.T, clean bool) {
	const maxTTL = 400 * time.Millisecond
	rs := newRestartable(t, maxTTL)
	nm := openClient(t, rs.srv, nil)
	var held Lock
	if err := nm.Lock(testRetries, testTimeout, &held, "held", maxTTL); err != nil {
		t.Fatal(err)
	}
	fence := held.FenceID()
	restarted := time.Now()
	rs.restart(clean)
	if !rs.srv.LockDelay() {
		t.Fatal("no lock-delay although a lock was held")
	}
	// Nobody can take the key the old holder may still believe it has.
	var l Lock
	if err := nm.Lock(testRetries, testTimeout, &l, "held", maxTTL); err != ErrLockDelay {
		t.Fatalf("Lock during lock-delay: %v, want ErrLockDelay", err)
	}
	// The lock from before the restart is reported lost.
	if err := nm.Update(testRetries, testTimeout, &held, maxTTL); err != ErrLockLost {
		t.Fatalf("Update of a lock from before the restart: %v, want ErrLockLost", err)
	}
	if err := nm.Unlock(testRetries, testTimeout, &held); err != ErrNotLocked {
		t.Fatalf("Unlock after the loss was reported: %v, want ErrNotLocked", err)
	}
	waitFor(t, 5*time.Second, func() bool {
		return nm.Lock(testRetries, testTimeout, &l, "held", maxTTL) == nil
	})
	if time.Since(restarted) < maxTTL {
		t.Fatalf("granted %v after restart, inside the lock-delay of %v", time.Since(restarted), maxTTL)
	}
	if l.FenceID() <= fence {
		t.Fatalf("fence went from %d to %d across a restart", fence, l.FenceID())
	}
}

func TestUncleanRestartLockDelay(t *testing.T)  { testRestartWithLock(t, false) }
func TestCleanRestartWithLockHeld(t *testing.T) { testRestartWithLock(t, true) }

// TestUnlockAfterRestart checks the Unlock side of a lost lock.
func TestUnlockAfterRestart(t *testing.T) {
	rs := newRestartable(t, 200*time.Millisecond)
	nm := openClient(t, rs.srv, nil)
	var held Lock
	if err := nm.Lock(testRetries, testTimeout, &held, "k", 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	rs.restart(false)
	// The UNLOCK itself meets the new server, which no longer knows the session.
	if err := nm.Unlock(testRetries, testTimeout, &held); err != ErrLockLost {
		t.Fatalf("Unlock of a lock from before the restart: %v, want ErrLockLost", err)
	}
}

// TestRedirectMidSession: a server that becomes a follower answers REDIRECT to the
// requests of a live client, which follows it to the leader.
func TestRedirectMidSession(t *testing.T) {
	leader := startServer(t, nil)
	rs := newRestartable(t, 10*time.Second)
	nm := openClient(t, rs.srv, nil)
	var l Lock
	if err := nm.Lock(testRetries, testTimeout, &l, "k", time.Second); err != nil {
		t.Fatal(err)
	}
	rs.cfg.Redirect = &wire.Server{ID: 9, Addr: leader.Addr().String()}
	rs.restart(true)
	var l2 Lock
	if err := nm.Lock(testRetries, testTimeout, &l2, "k2", time.Second); err != nil {
		t.Fatalf("Lock through a redirect: %v", err)
	}
	if leader.Stats().Grants != 1 {
		t.Fatalf("leader granted %d, want 1", leader.Stats().Grants)
	}
	if err := nm.Unlock(testRetries, testTimeout, &l); err != ErrLockLost {
		t.Fatalf("lock held on the old server: %v, want ErrLockLost", err)
	}
}
