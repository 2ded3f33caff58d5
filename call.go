// Stage: the shared implementation of the public calls. Both forms of each call (the
// original's retries and timeout, and the context's) come here with a pacing; the
// arguments are checked before anything is sent, one exchange runs, and its result
// becomes the Lock's state and the caller's error.
package netmutex

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// pacing is how one call retries: attempts of timeout ns each, an absolute deadline
// (nanotime, 0 = none) and a context for cancellation (nil = none).
type pacing struct {
	attempts int
	timeout  int64
	deadline int64
	ctx      context.Context
	wait     bool // a waiting LOCK: parked while QUEUED
}

func contextPacing(ctx context.Context, retries int, timeout time.Duration) pacing {
	if retries <= 0 {
		retries = DefaultRetries
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	pc := pacing{attempts: retries, timeout: int64(timeout)}
	if ctx.Done() != nil {
		pc.ctx = ctx
	}
	if d, ok := ctx.Deadline(); ok {
		pc.deadline = nanotime() + int64(time.Until(d))
		// Spend what the context allows, not less: attempts end at the deadline.
		pc.attempts = math.MaxInt32
	}
	return pc
}

func (nm *NetMutex) update(pc *pacing, l *Lock, ttl time.Duration) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	if l == nil {
		return ErrNilLock
	}
	_, err := nm.renew(pc, l, ttl)
	return err
}

// renew sends an UPDATE of l for ttl and returns when it was first sent: the server's
// new lease lasts at least until then + ttl.
func (nm *NetMutex) renew(pc *pacing, l *Lock, ttl time.Duration) (int64, error) {
	ttlMs, err := nm.ttlMillis(ttl)
	if err != nil {
		return 0, err
	}
	return nm.onHeld(pc, l, wire.OpUpdate, ttlMs)
}

func (nm *NetMutex) unlock(pc *pacing, l *Lock) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	if l == nil {
		return ErrNilLock
	}
	_, err := nm.onHeld(pc, l, wire.OpUnlock, 0)
	return err
}

// onHeld sends an UPDATE or UNLOCK of the lock l holds and returns, on success, when
// the request was first sent. A lock the server no longer knows, or whose holder is
// isolated, leaves l empty; so does a successful UNLOCK.
func (nm *NetMutex) onHeld(pc *pacing, l *Lock, op wire.Op, ttlMs uint32) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id == 0 {
		return 0, ErrNotLocked
	}
	if nm.lost(l) {
		l.reset()
		return 0, ErrLockLost
	}
	res, _ := nm.exchange(pc, &params{op: op, key: l.key, lockID: l.id, ttlMs: ttlMs})
	if res.err == nil && res.op == wire.OpOK {
		if op == wire.OpUnlock {
			l.reset()
		}
		return res.sent, nil
	}
	err := resultErr(res)
	if err == ErrLockLost || err == ErrIsolated {
		l.reset()
	}
	return 0, err
}

func (nm *NetMutex) unlockAll(pc *pacing) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	res, _ := nm.exchange(pc, &params{op: wire.OpUnlockAll})
	if res.err == nil && res.op == wire.OpPong { // UNLOCKALL's empty acknowledgement
		return nil
	}
	return resultErr(res)
}

func (nm *NetMutex) close(pc *pacing) error {
	if nm.closed.Swap(true) {
		return ErrDisconnected
	}
	nm.switchMu.Lock()
	defer nm.switchMu.Unlock()
	c := nm.conn.Load()
	var err error
	if c.session.Load() != 0 && !c.isolated.Load() {
		c.leaving.Store(true) // DISCONNECTED is now the answer we want, not a reason to reconnect
		r := c.requests.acquire(wire.OpDisconnect, pc.attempts, pc.timeout, pc.deadline)
		(&params{op: wire.OpDisconnect}).encode(r)
		res := c.roundTrip(r, pc.ctx)
		if res.err != nil {
			err = res.err
		}
	}
	c.close()
	return err
}

// lost reports whether l's session is gone: the server restarted or forgot it, or the
// client moved to another server.
func (nm *NetMutex) lost(l *Lock) bool {
	c := nm.conn.Load()
	return l.conn != c || c.session.Load() != l.session
}

// ttlMillis converts ttl for the wire, rounding up: the server's lease must not end
// before the one the caller asked for.
func (nm *NetMutex) ttlMillis(ttl time.Duration) (uint32, error) {
	if ttl <= 0 {
		return 0, ErrWrongTTL
	}
	ms := (ttl + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxUint32 {
		return 0, ErrWrongTTL
	}
	if c := nm.conn.Load(); c != nil {
		if si := c.server.Load(); si != nil && si.maxTTL > 0 && ms*time.Millisecond > si.maxTTL {
			return 0, ErrTTLTooLong
		}
	}
	return uint32(ms), nil
}

// waitPacing is the pacing of a call that may wait in a queue: as long as ctx allows.
// Attempts still count unanswered sends, to notice a server that stopped answering.
func waitPacing(ctx context.Context, retries int, timeout time.Duration) pacing {
	pc := contextPacing(ctx, retries, timeout)
	pc.wait = true
	return pc
}

// waitBound is the bound a waiting LOCK tells the server: a little past the caller's
// deadline, so that the client gives up first and its clean-up UNLOCK settles the
// outcome; 0 (none) without a deadline.
func (pc *pacing) waitBound() uint32 {
	if pc.deadline == 0 {
		return 0
	}
	ms := (pc.deadline-nanotime())/int64(time.Millisecond) + waitSlackMs
	return uint32(min(max(ms, 1), math.MaxUint32))
}

// waitSlackMs is how much longer than its caller a waiting LOCK asks the server to keep
// it: a round trip or two on any network a lock service runs on.
const waitSlackMs = 1000

func (nm *NetMutex) checkKey(key string) error {
	switch {
	case key == "":
		return ErrEmptyKey
	case len(key) > MaxKeySize:
		return ErrLongKey
	}
	return nil
}

// lock takes key into l: a try-lock, or, with wait, a LOCK that waits in the key's queue.
func (nm *NetMutex) lock(pc *pacing, l *Lock, key string, ttl time.Duration, wait bool) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	if l == nil {
		return ErrNilLock
	}
	if err := nm.checkKey(key); err != nil {
		return err
	}
	ttlMs, err := nm.ttlMillis(ttl)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id != 0 && !nm.lost(l) {
		return ErrLockInUse
	}
	p := params{op: wire.OpLock, key: key, ttlMs: ttlMs}
	if wait {
		p.wait, p.waitMs = true, pc.waitBound()
	}
	res, c := nm.exchange(pc, &p)
	if res.err == nil && res.op == wire.OpOK {
		l.set(key, res.id, res.fence, res.session, c)
		return nil
	}
	if wait {
		return nm.settleGivenUp(c, res, []string{key}, ttl)
	}
	return resultErr(res)
}

// settleGivenUp returns the error of a waiting LOCK or LOCKMANY that failed. If the
// caller gave up on it (its context ended) after it was sent, it may be queued, or
// granted with the grant still on its way: before returning, the UNLOCK of its id is sent
// and its answer awaited, paced by the TTL, so that the caller gets ctx.Err() only once
// the key is released, never an orphan that would expire and isolate the session with
// every lock it holds. If no answer comes, the error also wraps ErrTooMuchRetries: the
// key may stay granted to this session until it expires.
func (nm *NetMutex) settleGivenUp(c *serverConn, res result, keys []string, ttl time.Duration) error {
	err := resultErr(res)
	if res.id == 0 || !(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return err
	}
	timeout, attempts := cleanupPacing(int64(ttl))
	for _, k := range keys {
		r := c.requests.acquire(wire.OpUnlock, attempts, timeout, 0)
		(&params{op: wire.OpUnlock, lockID: res.id, key: k}).encode(r)
		ur := c.roundTrip(r, nil)
		switch {
		case ur.err == nil && ur.op == wire.OpOK:
		case ur.err == ErrDisconnected, ur.op == wire.OpDisconnected:
			return err // the session is gone, and its locks with it
		case ur.op == wire.OpIsolated:
			return fmt.Errorf("%w: %w", err, ErrIsolated)
		default:
			return fmt.Errorf("%w; the key may stay granted to this session until it expires: %w", err, ErrTooMuchRetries)
		}
	}
	return err
}

func (nm *NetMutex) acquireMany(pc *pacing, locks []*Lock, keys []string, ttl time.Duration) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	if len(keys) == 0 || len(keys) > MaxManyKeys || len(locks) != len(keys) {
		return ErrTooManyKeys
	}
	for i, k := range keys {
		if locks[i] == nil {
			return ErrNilLock
		}
		if err := nm.checkKey(k); err != nil {
			return err
		}
		for _, other := range keys[:i] {
			if other == k {
				return ErrDuplicateKey
			}
		}
		for _, other := range locks[:i] {
			if other == locks[i] {
				return ErrLockInUse
			}
		}
	}
	ttlMs, err := nm.ttlMillis(ttl)
	if err != nil {
		return err
	}
	for _, l := range locks {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.id != 0 && !nm.lost(l) {
			return ErrLockInUse
		}
	}
	res, c := nm.exchange(pc, &params{op: wire.OpLockMany, keys: slices.Clone(keys), ttlMs: ttlMs, wait: true, waitMs: pc.waitBound()})
	if res.err == nil && res.op == wire.OpOK {
		for i, l := range locks {
			l.set(keys[i], res.id, res.fence+uint64(i), res.session, c)
		}
		return nil
	}
	return nm.settleGivenUp(c, res, keys, ttl)
}
