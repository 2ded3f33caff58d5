// Stage: retransmission. One deadline scan per connection, run by the send loop,
// instead of a timer per request: it resends what went unanswered (same id), gives up on
// what ran out of attempts or past its deadline, owes a clean-up UNLOCK for a LOCK given
// up on after it left, and keeps the session alive with TOUCH.
package netmutex

import (
	"math"
	"runtime"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// scanInterval is how often the send loop walks its requests for retransmission
// deadlines: one walk per connection instead of a timer per request. It bounds how late
// a retransmission can be; a millisecond is far below any sensible attempt timeout.
const scanInterval = int64(time.Millisecond)

// parkedResend is how often a LOCK waiting in the server's queue is sent again: it
// recovers a lost QUEUED or a lost pushed grant, and tells a dead server from a slow
// queue. A copy costs the server O(1); a lost grant is recovered within this time.
const parkedResend = int64(250 * time.Millisecond)

// parkedResendFor is how often a parked LOCK of ttl ns is sent again: parkedResend, or an
// eighth of its TTL if that is shorter, so that a lost grant is recovered long before it
// could expire unseen and isolate the session.
func parkedResendFor(ttl int64) int64 {
	if ttl <= 0 {
		return parkedResend
	}
	return min(parkedResend, max(ttl/8, cleanupMinTimeout))
}

// Clean-up UNLOCKs are requests of their own, retried like any other: a waiter that
// leaves the queue must leave it, and a grant nobody took must be released, or it would
// expire and isolate the session, and with it every lock the session holds. So the
// UNLOCK is paced by the lock's TTL: a tenth of it per attempt (between cleanupMinTimeout
// and cleanupMaxTimeout), for as many attempts as cover the whole TTL and then some.
const (
	cleanupMinTimeout = int64(2 * time.Millisecond)
	cleanupMaxTimeout = int64(200 * time.Millisecond)
	cleanupAttempts   = 10 // beyond the TTL: the lock may still be queued
)

// cleanupPacing returns the attempt timeout and the attempts of the clean-up UNLOCK of a
// lock of ttl ns: at least ten tries within the TTL, for the first that gets through.
func cleanupPacing(ttl int64) (timeout int64, attempts int) {
	timeout = min(max(ttl/10, cleanupMinTimeout), cleanupMaxTimeout)
	return timeout, int(ttl/timeout) + cleanupAttempts
}

// cleanup is an UNLOCK owed for a LOCK given up on after it was sent: it may have been
// granted, and an orphaned lock would expire and isolate the session.
type cleanup struct {
	lockID uint64
	key    string
	ttl    int64 // the lock's TTL, ns
}

// scan walks every held request once: drops finished ones, sends parked ones once a
// session exists, retransmits or fails those whose attempt ran out, and computes the
// ack floor. A request whose attempt ran out without a datagram from the server since
// it left moves the socket to another server of the cluster (retarget.go).
func (c *serverConn) scan(now int64, session uint64) {
	c.lastScan = now
	c.nextDue = math.MaxInt64
	c.sampleServed()
	hold := c.holding(now)
	silent := false
	floor := c.nextID
	kept := c.list[:0]
	for _, r := range c.list {
		st := r.state.Load()
		switch {
		case st == stateDone || st == stateCancelled:
			if r.orphan && !r.takeCompletion() {
				kept = append(kept, r) // its completer is still at work: next scan
				continue
			}
			if st == stateCancelled {
				c.owe(r)
			}
			c.drop(r)
			continue
		case r.deadline != 0 && now >= r.deadline:
			c.giveUp(r, errDeadline)
			c.drop(r)
			continue
		case r.id != 0 && session != 0 && session != r.session:
			r.failLocal(nil) // its session is gone: the caller decides
			c.drop(r)
			continue
		case r.queued.Load() && r.queued.Swap(false): // a load first: most requests are never queued, and the scan visits each every millisecond
			// QUEUED: the server holds it in the key's queue. Attempts count again from
			// here, and only to notice a server that stopped answering.
			r.parked, r.sent = true, 0
			r.attemptEnd = now + parkedResendFor(r.ttl)
		case now >= r.attemptEnd:
			if r.id == 0 {
				r.sent++ // an attempt spent waiting for a session
			}
			if r.sent >= r.attempts {
				c.giveUp(r, ErrTooMuchRetries)
				c.drop(r)
				continue
			}
			if r.id != 0 && session != 0 && !r.parked && c.pastWindow(r, now) {
				// The server keeps what it needs to recognise a copy for a bounded
				// time only; a later retransmission could be taken for a new request.
				c.giveUp(r, ErrTooMuchRetries)
				c.drop(r)
				continue
			}
			if r.id != 0 && session != 0 && hold {
				// The copy of this attempt leaves when the pause ends.
				r.sent++
				r.attemptEnd = now + c.period(r)
			} else if r.id != 0 && session != 0 && r.lastSent > r.attemptEnd-c.period(r) {
				// A copy went to a server the socket moved to during this attempt: it
				// counts as this attempt's, and gets a whole attempt to be answered.
				r.sent++
				r.attemptEnd = r.lastSent + c.period(r)
			} else if r.id != 0 && session != 0 {
				silent = silent || c.silent(r, now)
				c.send(r, now, session)
				if r.parked {
					r.attemptEnd = now + parkedResendFor(r.ttl)
				}
			} else {
				if r.id != 0 {
					r.sent++ // an attempt spent waiting for the session to return
				}
				r.attemptEnd = now + r.timeout
			}
		case r.id == 0 && session != 0 && !hold:
			c.send(r, now, session)
		}
		if r.id != 0 && r.id < floor {
			floor = r.id
		}
		c.expect(r, now)
		kept = append(kept, r)
	}
	clear(c.list[len(kept):])
	c.list = kept
	c.floor = max(c.floor, floor)
	touchLost := c.touchSilent(now)
	if session != 0 && !hold && (silent || touchLost) {
		// The server said nothing for a whole attempt: gone, or cut off. A lost
		// datagram looks the same, and costs a round trip to a follower or two.
		c.mv.round = 0
		c.moveNext(now, now, false)
	}
}

// redirectParked answers the requests waiting for a session with the REDIRECT that
// the server gave instead of one: the caller moves to the server it names.
func (c *serverConn) redirectParked() {
	p := c.redirect.Load()
	for _, r := range c.list {
		if r.id == 0 {
			r.complete(stateQueued, result{op: wire.OpRedirect, addr: *p})
		}
	}
}

// pastWindow reports whether r was first sent longer ago than the server's retransmit
// window, after which the protocol forbids sending it again.
func (c *serverConn) pastWindow(r *request, now int64) bool {
	si := c.server.Load()
	return si != nil && si.retransmitWindow > 0 && now-r.firstSent >= int64(si.retransmitWindow)
}

// giveUp fails r; a LOCK that may have been granted, or queued, gets a clean-up UNLOCK.
func (c *serverConn) giveUp(r *request, err error) {
	if r.failLocal(err) {
		c.owe(r)
	}
}

// owe records the clean-up UNLOCKs of a LOCK or LOCKMANY that was sent and whose caller
// will never learn its outcome: it may be granted, or waiting in a queue.
func (c *serverConn) owe(r *request) {
	if r.id == 0 {
		return // never sent
	}
	switch r.op {
	case wire.OpLock:
		c.cleanups = append(c.cleanups, cleanup{lockID: r.id, key: r.key, ttl: r.ttl})
	case wire.OpLockMany:
		for _, k := range r.keys {
			c.cleanups = append(c.cleanups, cleanup{lockID: r.id, key: k, ttl: r.ttl})
		}
	}
}

// drop gives up the sender's hold on r.
func (c *serverConn) drop(r *request) {
	if r.id != 0 {
		c.table.release(r.id, r)
	}
	r.release()
}

// sendCleanups turns the UNLOCKs owed into requests with no caller, sent and retried
// like any other until answered or their attempts run out.
func (c *serverConn) sendCleanups(session uint64) {
	if session == 0 {
		c.cleanups = c.cleanups[:0] // the session, and its locks, are gone anyway
		return
	}
	sent := 0
	for _, u := range c.cleanups {
		if len(c.list) == cap(c.list) {
			break // every slot is in use: the rest wait for the next round
		}
		timeout, attempts := cleanupPacing(u.ttl)
		r := c.requests.acquire(wire.OpUnlock, attempts, timeout, 0)
		r.refs.Store(1) // the send loop's alone
		r.orphan = true
		(&params{op: wire.OpUnlock, lockID: u.lockID, key: u.key}).encode(r)
		c.list = append(c.list, r)
		now := nanotime()
		c.send(r, now, session)
		c.expect(r, now)
		sent++
	}
	n := copy(c.cleanups, c.cleanups[sent:])
	clear(c.cleanups[n:])
	c.cleanups = c.cleanups[:n]
}

// expect notes when the scan must next look at r: when its attempt or its deadline
// ends, or at the next scan while it waits to be sent. Sleeping until then, instead of
// scanning every millisecond, is what spares a connection with a request outstanding a
// wake-up per millisecond (see idleWait).
func (c *serverConn) expect(r *request, now int64) {
	due := r.attemptEnd
	if r.id == 0 || r.state.Load() != r.id {
		due = now + scanInterval // unsent, or done and to be dropped
	}
	if r.deadline != 0 {
		due = min(due, r.deadline)
	}
	c.nextDue = min(c.nextDue, due)
}

// idleWait is how long the sender may sleep with nothing to send: until the scan has
// work (a finished request is dropped by the next scan that runs anyway), a TOUCH is
// due, or a move needs attention. Whatever else needs the sender wakes it: a caller's
// push, a QUEUED, a cancel, the receive loop's news.
func (c *serverConn) idleWait(now int64) time.Duration {
	scanWait := time.Duration(math.MaxInt64)
	if len(c.list) > 0 {
		scanWait = time.Duration(max(c.nextDue, c.lastScan+scanInterval) - now)
	}
	if c.session.Load() == 0 {
		return max(min(scanWait, time.Duration(max(c.connBackoff, connRetryMin))), time.Millisecond)
	}
	wait := time.Second
	if si := c.server.Load(); si != nil {
		wait = time.Duration(c.lastSend + int64(si.sessionTimeout/3) - now)
	}
	wait = min(wait, scanWait)
	if m := &c.mv; m.touchAt != 0 {
		wait = min(wait, time.Duration(m.touchAt+m.timeout-now)) // to notice it unanswered
	}
	if m := &c.mv; m.resendAt != 0 {
		wait = min(wait, time.Duration(m.resendAt-now))
	}
	return max(wait, time.Millisecond)
}

// touchDue reports whether the session needs a TOUCH: nothing has left for a third of
// the server's session timeout, so two more chances remain if this one is lost.
func (c *serverConn) touchDue(now int64) bool {
	si := c.server.Load()
	return si != nil && now-c.lastSend >= int64(si.sessionTimeout/3)
}

// shutdown answers every request the sender holds or could still receive.
func (c *serverConn) shutdown() {
	c.stopped.Store(true)
	for _, r := range c.list {
		r.failLocal(ErrDisconnected)
		if r.orphan && r.state.Load() == stateDone {
			<-r.done // its completer, us or the receive loop, sends it at once
		}
		c.drop(r)
	}
	c.list = c.list[:0]
	for c.ring.pending() {
		if r := c.ring.pop(); r != nil {
			r.failLocal(ErrDisconnected)
			r.release()
		} else {
			runtime.Gosched() // a producer is between claiming and filling its slot
		}
	}
}
