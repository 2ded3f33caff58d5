package main

import (
	"testing"
	"time"
)

func TestBucketsCoverEveryValue(t *testing.T) {
	// Every value lands in a bucket whose range holds it, buckets are contiguous, and a
	// bucket is never wider than 1/histSub of its lower bound.
	prevHi := uint64(0)
	for i := 0; i < histBuckets; i++ {
		lo, hi := bucketRange(i)
		if i > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if i >= 2*histSub && hi-lo+1 > lo/histSub {
			t.Fatalf("bucket %d [%d,%d] wider than 1/%d of its values", i, lo, hi, histSub)
		}
		for _, v := range []uint64{lo, hi, lo + (hi-lo)/2} {
			if got := bucketOf(v); got != i {
				t.Fatalf("bucketOf(%d) = %d, want %d", v, got, i)
			}
		}
		prevHi = hi
	}
	if prevHi != histMax {
		t.Fatalf("last bucket ends at %d, want %d", prevHi, histMax)
	}
	if got := bucketOf(1 << 62); got != histBuckets-1 {
		t.Fatalf("huge value in bucket %d, want the last", got)
	}
}

func TestQuantilesOfKnownInputs(t *testing.T) {
	t.Run("uniform 1..10000 µs", func(t *testing.T) {
		var h hist
		for i := 1; i <= 10000; i++ {
			h.record(time.Duration(i) * time.Microsecond)
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
			got := h.quantile(c.q)
			if diff := got - c.want; diff < -c.want/histSub || diff > c.want/histSub {
				t.Errorf("q%.3f = %v, want %v ±1/%d", c.q, got, c.want, histSub)
			}
		}
		if h.mean() != 5000500*time.Nanosecond {
			t.Errorf("mean = %v, want 5.0005ms", h.mean())
		}
	})
	t.Run("small values are exact", func(t *testing.T) {
		var h hist
		for _, v := range []time.Duration{3, 7, 7, 100} {
			h.record(v)
		}
		if got := h.quantile(0.5); got != 7 {
			t.Errorf("p50 = %v, want 7ns", got)
		}
		if got := h.quantile(0.25); got != 3 {
			t.Errorf("p25 = %v, want 3ns", got)
		}
		if got := h.quantile(0.999); got != 100 {
			t.Errorf("p99.9 = %v, want 100ns", got)
		}
	})
	t.Run("tail of a skewed distribution", func(t *testing.T) {
		// 990 fast values, 9 slow, 1 very slow: p99 is still fast, p99.9 is slow.
		var h hist
		for i := 0; i < 990; i++ {
			h.record(20 * time.Microsecond)
		}
		for i := 0; i < 9; i++ {
			h.record(5 * time.Millisecond)
		}
		h.record(time.Second)
		near := func(got, want time.Duration) bool {
			return got >= want-want/histSub && got <= want+want/histSub
		}
		if got := h.quantile(0.99); !near(got, 20*time.Microsecond) {
			t.Errorf("p99 = %v, want 20µs", got)
		}
		if got := h.quantile(0.995); !near(got, 5*time.Millisecond) {
			t.Errorf("p99.5 = %v, want 5ms", got)
		}
		if got := h.quantile(1); got != time.Second {
			t.Errorf("max = %v, want 1s", got)
		}
	})
	t.Run("merge equals one histogram", func(t *testing.T) {
		var a, b, all hist
		for i := 1; i <= 1000; i++ {
			d := time.Duration(i*i) * time.Nanosecond
			all.record(d)
			if i%2 == 0 {
				a.record(d)
			} else {
				b.record(d)
			}
		}
		a.merge(&b)
		if a != all {
			t.Fatal("merged histogram differs from the one recorded whole")
		}
	})
	t.Run("empty", func(t *testing.T) {
		var h hist
		if h.quantile(0.5) != 0 || h.mean() != 0 {
			t.Fatal("empty histogram reports a value")
		}
	})
}

func TestRecordDoesNotAllocate(t *testing.T) {
	var h hist
	if n := testing.AllocsPerRun(1000, func() { h.record(1234567) }); n != 0 {
		t.Fatalf("record allocates %v per call", n)
	}
}
