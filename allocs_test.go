//go:build !race

package netmutex

import (
	"context"
	"testing"
	"time"
)

// TestZeroAllocs asserts that the steady state of Lock, Update and Unlock, in both the
// original and the context forms, allocates nothing against the real server.
func TestZeroAllocs(t *testing.T) {
	srv := startServer(t, nil)
	nm := openClient(t, srv, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var l Lock
	cycle := func() {
		if err := nm.Lock(testRetries, testTimeout, &l, "allocs", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := nm.Update(testRetries, testTimeout, &l, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := nm.Unlock(testRetries, testTimeout, &l); err != nil {
			t.Fatal(err)
		}
	}
	cycleCtx := func() {
		if err := nm.LockContext(ctx, &l, "allocs", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := nm.UpdateContext(ctx, &l, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := nm.UnlockContext(ctx, &l); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 100; i++ { // warm the pools
		cycle()
		cycleCtx()
	}
	if a := testing.AllocsPerRun(200, cycle); a != 0 {
		t.Errorf("Lock+Update+Unlock: %v allocs per run, want 0", a)
	}
	if a := testing.AllocsPerRun(200, cycleCtx); a != 0 {
		t.Errorf("LockContext+UpdateContext+UnlockContext: %v allocs per run, want 0", a)
	}
}
