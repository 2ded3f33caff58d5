// Stage: holding a lock for a function. Hold acquires, renews in the background, and
// keeps a lease that ends fn's context before the server could let the lock expire.
package netmutex

import (
	"context"
	"errors"
	"sync"
	"time"
)

// holdMargin is how much earlier than the server's earliest possible expiry fn's
// context ends: a tenth of the TTL, so that fn has time to notice and stop, and clock
// rates that differ by far less than that between client and server do not matter.
func holdMargin(ttl time.Duration) time.Duration { return max(ttl/10, time.Millisecond) }

func (nm *NetMutex) hold(ctx context.Context, key string, ttl time.Duration, fn func(context.Context, *Lock) error) error {
	if fn == nil {
		panic("netmutex: Hold with a nil fn")
	}
	l := new(Lock)
	if err := nm.Acquire(ctx, l, key, ttl); err != nil {
		return err
	}
	// A waiting LOCK was granted at a time this client cannot know: renew at once, so
	// that the lease starts from a send time it does know.
	pc := contextPacing(ctx, nm.retries, nm.timeout)
	sent, err := nm.renew(&pc, l, ttl)
	if err != nil {
		nm.releaseHeld(ctx, l)
		return err
	}
	fnCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	lease := newLease(sent, ttl, cancel)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		nm.keepRenewed(fnCtx, l, ttl, lease, cancel, stop)
	}()
	fnErr := fn(fnCtx, l)
	close(stop)
	wg.Wait()
	lease.stop()
	cause := context.Cause(fnCtx)
	lost := cause != nil && errors.Is(cause, ErrIsolated)
	var unlockErr error
	if !lost {
		unlockErr = nm.releaseHeld(ctx, l)
	}
	switch {
	case fnErr != nil:
		return fnErr
	case lost:
		return cause
	case errors.Is(unlockErr, ErrIsolated):
		return unlockErr
	}
	return nil
}

// releaseHeld unlocks l within the NetMutex's own pacing, even after ctx ended.
func (nm *NetMutex) releaseHeld(ctx context.Context, l *Lock) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(nm.retries)*nm.timeout)
	defer cancel()
	err := nm.UnlockContext(uctx, l)
	if err == ErrNotLocked {
		return nil
	}
	return err
}

// keepRenewed renews l every third of its TTL until stop, extending the lease with each
// renewal that lands. A renewal that finds the lock gone ends fn's context at once; one
// that goes unanswered is tried again, faster, until the lease runs out.
func (nm *NetMutex) keepRenewed(ctx context.Context, l *Lock, ttl time.Duration, lease *lease, cancel context.CancelCauseFunc, stop <-chan struct{}) {
	every := max(ttl/3, time.Millisecond)
	timer := time.NewTimer(every)
	defer timer.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		rctx, rcancel := context.WithDeadline(ctx, lease.end())
		pc := contextPacing(rctx, nm.retries, nm.timeout)
		sent, err := nm.renew(&pc, l, ttl)
		rcancel()
		switch {
		case err == nil:
			lease.extend(sent)
			timer.Reset(every)
		case errors.Is(err, ErrIsolated), err == ErrNotLocked, err == ErrDisconnected:
			cancel(err)
			return
		default: // unanswered: the lease decides
			timer.Reset(max(every/4, time.Millisecond))
		}
	}
}

// lease ends fn's context when the server could first let the lock expire, less the
// margin, unless a renewal extends it.
type lease struct {
	mu     sync.Mutex
	ttl    time.Duration
	until  time.Time
	timer  *time.Timer
	cancel context.CancelCauseFunc
}

func newLease(sent int64, ttl time.Duration, cancel context.CancelCauseFunc) *lease {
	ls := &lease{ttl: ttl, cancel: cancel}
	ls.until = ls.endFrom(sent)
	ls.timer = time.AfterFunc(time.Until(ls.until), func() { cancel(ErrLeaseExpired) })
	return ls
}

// endFrom is the end of a lease granted or renewed by a request first sent at sent.
func (ls *lease) endFrom(sent int64) time.Time {
	return epoch.Add(time.Duration(sent) + ls.ttl - holdMargin(ls.ttl))
}

func (ls *lease) end() time.Time {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.until
}

// extend moves the end to that of a renewal first sent at sent, unless the lease already
// ran out: an expired lease stays expired.
func (ls *lease) extend(sent int64) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	until := ls.endFrom(sent)
	if !until.After(ls.until) || !ls.timer.Stop() {
		return
	}
	ls.until = until
	ls.timer.Reset(time.Until(until))
}

func (ls *lease) stop() { ls.timer.Stop() }
