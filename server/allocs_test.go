//go:build !race

package server

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/seal"
)

// TestProcessAllocs checks that the receive-apply-send path allocates nothing per
// request once warm.
func TestProcessAllocs(t *testing.T) {
	t.Run("plain", func(t *testing.T) { testProcessAllocs(t, nil) })
	t.Run("sealed", func(t *testing.T) { testProcessAllocs(t, testRing(t)) })
}

func testProcessAllocs(t *testing.T, ring *seal.Keyring) {
	h := newBenchHarnessKeys(t, ring)
	defer h.close()
	for i := 0; i < 10; i++ {
		h.round() // warm up: buffers, map entries, released lists
	}
	require.Zero(t, testing.AllocsPerRun(100, h.round), "allocations per batch of %d requests", h.requests())
}
