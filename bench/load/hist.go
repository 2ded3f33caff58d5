package load

import (
	"math"
	"math/bits"
	"time"
)

// Hist is a log-linear latency histogram in the HDR style: values below 2·histSub are
// counted exactly, and every power of two above that is cut into histSub equal buckets,
// so a bucket is never wider than 1/histSub (1.6%) of the values it holds. It is a fixed
// array: recording never allocates, and one Hist per goroutine needs no locking. Merge
// them at the end.
type Hist struct {
	counts   [histBuckets]uint64
	n        uint64
	sum      uint64 // ns
	min, max uint64 // ns
}

const (
	histSubBits = 6
	histSub     = 1 << histSubBits // buckets per power of two: 1.6% resolution
	// histMaxBits caps values at 2^40 ns (about 18 minutes); longer ones count there.
	histMaxBits = 40
	histBuckets = (histMaxBits-histSubBits)*histSub + histSub
	histMax     = 1<<histMaxBits - 1
)

// bucketOf returns the bucket of v ns.
func bucketOf(v uint64) int {
	if v > histMax {
		v = histMax
	}
	l := bits.Len64(v)
	if l <= histSubBits+1 {
		return int(v)
	}
	shift := l - histSubBits - 1
	return (shift+1)*histSub + int(v>>shift) - histSub
}

// bucketRange returns the values [lo, hi] that bucket i holds.
func bucketRange(i int) (lo, hi uint64) {
	if i < 2*histSub {
		return uint64(i), uint64(i)
	}
	shift := i/histSub - 1
	lo = uint64(i%histSub+histSub) << shift
	return lo, lo + 1<<shift - 1
}

// Record adds one value. Any goroutine may call it on its own Hist.
func (h *Hist) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += v
}

// Merge adds o's values to h.
func (h *Hist) Merge(o *Hist) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Quantile returns the value at quantile q (0 < q <= 1): the middle of the bucket that
// holds the ceil(q·n)-th smallest value, clamped to the exact min and max.
func (h *Hist) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := bucketRange(i)
			v := lo + (hi-lo)/2
			return time.Duration(min(max(v, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}

// Mean returns the exact mean.
func (h *Hist) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / h.n)
}

// CDF returns up to points (value, fraction of values <= value) pairs, one per non-empty
// bucket, for plotting.
func (h *Hist) CDF() (xs []time.Duration, fs []float64) {
	var seen uint64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		seen += c
		_, hi := bucketRange(i)
		xs = append(xs, time.Duration(min(hi, h.max)))
		fs = append(fs, float64(seen)/float64(h.n))
	}
	return xs, fs
}

// Count returns how many values were recorded.
func (h *Hist) Count() uint64 { return h.n }
