//go:build !race

package server

import (
	"testing"
)

// TestProcessAllocs checks that the receive-apply-send path allocates nothing per
// request once warm.
func TestProcessAllocs(t *testing.T) {
	h := newBenchHarness(t)
	defer h.close()
	for i := 0; i < 10; i++ {
		h.round() // warm up: buffers, map entries, released lists
	}
	if allocs := testing.AllocsPerRun(100, h.round); allocs != 0 {
		t.Fatalf("%v allocations per batch of %d requests, want 0", allocs, h.requests())
	}
}
