package load

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBucketsCoverEveryValue(t *testing.T) {
	// Every value lands in a bucket whose range holds it, buckets are contiguous, and a
	// bucket is never wider than 1/histSub of its lower bound.
	prevHi := uint64(0)
	for i := 0; i < histBuckets; i++ {
		lo, hi := bucketRange(i)
		if i > 0 {
			require.Equal(t, prevHi+1, lo, "bucket %d starts where the previous ended, plus one", i)
		}
		if i >= 2*histSub {
			require.LessOrEqual(t, hi-lo+1, lo/histSub, "bucket %d [%d,%d] wider than 1/%d of its values", i, lo, hi, histSub)
		}
		for _, v := range []uint64{lo, hi, lo + (hi-lo)/2} {
			require.Equal(t, i, bucketOf(v), "bucketOf(%d)", v)
		}
		prevHi = hi
	}
	assert.Equal(t, uint64(histMax), prevHi, "where the last bucket ends")
	assert.Equal(t, histBuckets-1, bucketOf(1<<62), "a huge value goes to the last bucket")
}

func TestQuantilesOfKnownInputs(t *testing.T) {
	t.Run("uniform 1..10000 µs", func(t *testing.T) {
		var h Hist
		for i := 1; i <= 10000; i++ {
			h.Record(time.Duration(i) * time.Microsecond)
		}
		for _, c := range []struct {
			q    float64
			want time.Duration
		}{
			{0.5, 5000 * time.Microsecond},
			{0.9, 9000 * time.Microsecond},
			{0.99, 9900 * time.Microsecond},
			{0.999, 9990 * time.Microsecond},
			{1, 10000 * time.Microsecond},
		} {
			assert.InDelta(t, float64(c.want), float64(h.Quantile(c.q)), float64(c.want/histSub), "q%.3f, want %v ±1/%d", c.q, c.want, histSub)
		}
		assert.Equal(t, 5000500*time.Nanosecond, h.Mean(), "mean")
	})
	t.Run("small values are exact", func(t *testing.T) {
		var h Hist
		for _, v := range []time.Duration{3, 7, 7, 100} {
			h.Record(v)
		}
		assert.Equal(t, 7*time.Nanosecond, h.Quantile(0.5), "p50")
		assert.Equal(t, 3*time.Nanosecond, h.Quantile(0.25), "p25")
		assert.Equal(t, 100*time.Nanosecond, h.Quantile(0.999), "p99.9")
	})
	t.Run("tail of a skewed distribution", func(t *testing.T) {
		// 990 fast values, 9 slow, 1 very slow: p99 is still fast, p99.9 is slow.
		var h Hist
		for i := 0; i < 990; i++ {
			h.Record(20 * time.Microsecond)
		}
		for i := 0; i < 9; i++ {
			h.Record(5 * time.Millisecond)
		}
		h.Record(time.Second)
		fast, slow := 20*time.Microsecond, 5*time.Millisecond
		assert.InDelta(t, float64(fast), float64(h.Quantile(0.99)), float64(fast/histSub), "p99")
		assert.InDelta(t, float64(slow), float64(h.Quantile(0.995)), float64(slow/histSub), "p99.5")
		assert.Equal(t, time.Second, h.Quantile(1), "max")
	})
	t.Run("merge equals one histogram", func(t *testing.T) {
		var a, b, all Hist
		for i := 1; i <= 1000; i++ {
			d := time.Duration(i*i) * time.Nanosecond
			all.Record(d)
			if i%2 == 0 {
				a.Record(d)
			} else {
				b.Record(d)
			}
		}
		a.Merge(&b)
		// == rather than assert.Equal, whose report would print all histBuckets counts twice.
		assert.True(t, a == all, "merged histogram differs from the one recorded whole")
	})
	t.Run("empty", func(t *testing.T) {
		var h Hist
		assert.Zero(t, h.Quantile(0.5), "empty histogram's median")
		assert.Zero(t, h.Mean(), "empty histogram's mean")
	})
}

func TestRecordDoesNotAllocate(t *testing.T) {
	var h Hist
	assert.Zero(t, testing.AllocsPerRun(1000, func() { h.Record(1234567) }), "allocations per record")
}
