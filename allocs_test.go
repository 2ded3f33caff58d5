//go:build !race

package netmutex

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestZeroAllocs asserts that the steady state of Lock, Update and Unlock, in both the
// original and the context forms, allocates nothing against the real server.
func TestZeroAllocs(t *testing.T) {
	srv := startServer(t, nil)
	nm := openClient(t, srv, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var l Lock
	// The cycles run on the test's goroutine (AllocsPerRun calls them in place), so
	// require may stop the test; once warm, its calls allocate nothing when the error
	// is nil, or the figures below would say so.
	cycle := func() {
		require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "allocs", time.Minute))
		require.NoError(t, nm.Update(testRetries, testTimeout, &l, time.Minute))
		require.NoError(t, nm.Unlock(testRetries, testTimeout, &l))
	}
	cycleCtx := func() {
		require.NoError(t, nm.LockContext(ctx, &l, "allocs", time.Minute))
		require.NoError(t, nm.UpdateContext(ctx, &l, time.Minute))
		require.NoError(t, nm.UnlockContext(ctx, &l))
	}
	for i := 0; i < 100; i++ { // warm the pools
		cycle()
		cycleCtx()
	}
	assert.Equal(t, 0.0, testing.AllocsPerRun(200, cycle), "Lock+Update+Unlock: allocs per run")
	assert.Equal(t, 0.0, testing.AllocsPerRun(200, cycleCtx), "LockContext+UpdateContext+UnlockContext: allocs per run")
}
