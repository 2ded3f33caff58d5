// One goroutine's load: lock and unlock in a loop (try-lock, or waiting when the system
// can wait), its counters and histograms, and the fairness index over all of them.

package load

import (
	"context"
	"sync/atomic"
	"time"
)

// counters are one goroutine's running totals, read by the progress printer. Padded so
// that no two goroutines write one cache line.
type counters struct {
	ops, pairs, refusals, errors atomic.Uint64
	_                            [64 - 32]byte
}

// worker is one goroutine's state; its histograms are touched by it alone until it
// ends.
type worker struct {
	c        counters
	pair     Hist // lock+unlock of a granted pair
	wait     Hist // contended: first attempt to grant
	firstErr atomic.Pointer[error]
}

// loop is one goroutine's load: try the next key; when granted, unlock it at once.
// Histograms are filled only while measuring; counters always (the run subtracts the
// warm-up). In contended mode a goroutine that was refused tries again at once, and its
// wait runs from its first refused attempt to the grant.
func loop(w *worker, l Locker, keys []string, g, c int, contended bool, phase *atomic.Int32) {
	ctx := context.Background()
	if waiter, ok := l.(Waiter); ok && contended {
		waitLoop(w, l, waiter, keys[0], phase)
		return
	}
	next := g % len(keys)
	var waitFrom time.Time
	for {
		ph := phase.Load()
		if ph == phaseStop {
			return
		}
		key := keys[next]
		next += c
		if next >= len(keys) {
			next %= len(keys)
		}
		t0 := time.Now()
		ok, err := l.Lock(ctx, key)
		w.c.ops.Add(1)
		if err != nil {
			w.fail(err)
			continue
		}
		if !ok {
			w.c.refusals.Add(1)
			if waitFrom.IsZero() {
				waitFrom = t0
			}
			continue
		}
		var granted time.Time
		if contended {
			granted = time.Now()
		}
		err = l.Unlock(ctx)
		t1 := time.Now()
		w.c.ops.Add(1)
		if err != nil {
			w.fail(err)
			continue
		}
		w.c.pairs.Add(1)
		if ph == phaseMeasure {
			w.pair.Record(t1.Sub(t0))
			if contended {
				if waitFrom.IsZero() {
					waitFrom = t0
				}
				w.wait.Record(granted.Sub(waitFrom))
			}
		}
		waitFrom = time.Time{}
	}
}

// jain is Jain's fairness index over the workers' measured acquisitions: (Σx)² / (n·Σx²),
// 1 when every goroutine got the key equally often, 1/n when one got it every time.
func jain(ws []*worker) float64 {
	var sum, sq float64
	for _, w := range ws {
		x := float64(w.pair.Count())
		sum += x
		sq += x * x
	}
	if sq == 0 {
		return 0
	}
	return sum * sum / (float64(len(ws)) * sq)
}

// fail counts an error, keeps the first, and pauses a little so that a broken system
// is not hammered.
func (w *worker) fail(err error) {
	w.c.errors.Add(1)
	w.firstErr.CompareAndSwap(nil, &err)
	time.Sleep(time.Millisecond)
}

// waitLoop is a contended goroutine with a waiting lock: wait for the key in the
// server's queue, unlock it at once when granted. Its wait runs from the call to the
// grant. The last waiters are let go by a context that ends once the run stops.
func waitLoop(w *worker, l Locker, waiter Waiter, key string, phase *atomic.Int32) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for phase.Load() != phaseStop {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	for {
		ph := phase.Load()
		if ph == phaseStop {
			return
		}
		t0 := time.Now()
		err := waiter.Acquire(ctx, key)
		w.c.ops.Add(1)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.fail(err)
			continue
		}
		granted := time.Now()
		err = l.Unlock(context.Background())
		t1 := time.Now()
		w.c.ops.Add(1)
		if err != nil {
			w.fail(err)
			continue
		}
		w.c.pairs.Add(1)
		if ph == phaseMeasure {
			w.pair.Record(t1.Sub(t0))
			w.wait.Record(granted.Sub(t0))
		}
	}
}
