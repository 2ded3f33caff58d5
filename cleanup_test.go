package netmutex

import (
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/faultproxy"
)

// TestGivenUpLockIsReleased: a LOCK that was granted but whose every reply was lost
// fails with ErrTooMuchRetries, and the client then releases it, so the key is free at
// once instead of expiring later and isolating a client that believes it holds nothing.
func TestGivenUpLockIsReleased(t *testing.T) {
	srv := startServer(t, nil)
	p, err := faultproxy.New(faultproxy.Config{Upstream: srv.Addr().String(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	nm, err := Open(testRetries, testTimeout, []string{p.Addr().String()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nm.Close(1, testTimeout)
	other := openClient(t, srv, nil)

	p.Blackhole(faultproxy.ToClient, true) // the grant happens; its replies vanish
	var l Lock
	if err := nm.Lock(2, 50*time.Millisecond, &l, "orphan", time.Minute); err != ErrTooMuchRetries {
		t.Fatalf("Lock with its replies lost: %v", err)
	}
	if srv.Stats().Grants != 1 {
		t.Fatalf("%d grants, want the 1 whose replies were lost", srv.Stats().Grants)
	}
	p.Blackhole(faultproxy.ToClient, false)
	var lo Lock
	waitFor(t, 5*time.Second, func() bool {
		return other.Lock(testRetries, testTimeout, &lo, "orphan", time.Second) == nil
	})
	if st := srv.Stats(); st.Isolations != 0 {
		t.Fatalf("%d isolations: the orphan expired instead of being released", st.Isolations)
	}
}
