// The machine's lock operations: LOCK, UPDATE, UNLOCK, UNLOCKALL, and isolating a session.
// Part of the Machine: Apply dispatches to them.

package server

import (
	"github.com/netmutex/netmutex/internal/wire"
)

// checkTTL sets r to the TTL error of ttl, if any.
func (m *machine) checkTTL(ttl uint32, r *result) bool {
	switch {
	case ttl == 0:
		r.Op, r.Code = wire.OpError, wire.CodeBadTTL
	case int64(ttl)*1e6 > m.cfg.MaxTTL:
		r.Op, r.Code = wire.OpError, wire.CodeTTLTooLong
	default:
		return true
	}
	return false
}

// answered sets r to the final answer already given to LOCK or LOCKMANY id of s, if
// any: a copy then gets it again, never a late grant to a client told it holds nothing.
func (m *machine) answered(s *session, id uint64, r *result) bool {
	how, done := s.released.get(id)
	if !done {
		return false
	}
	setAnswer(how, r)
	return true
}

// setAnswer sets r to the final answer how.
func setAnswer(how uint8, r *result) {
	switch how {
	case answeredLocked:
		r.Op = wire.OpLocked
	case answeredDelay:
		r.Op, r.Code = wire.OpError, wire.CodeLockDelay
	case answeredTooMany:
		r.Op, r.Code = wire.OpError, wire.CodeTooManyLocks
	case answeredFull:
		r.Op, r.Code = wire.OpError, wire.CodeServerFull
	case answeredTooManyWaiters:
		r.Op, r.Code = wire.OpError, wire.CodeTooManyWaiters
	default:
		r.Op, r.Code = wire.OpError, wire.CodeStale
	}
}

// current brings e up to date before s's request looks at it: an expiry the budget left
// is done (false, r ISOLATED, if that isolated s), and an entry of a released session
// is freed (it was free already; its entry was waiting for the budget).
func (m *machine) current(e *entry, s *session, now int64, r *result) bool {
	if overdue(e, now) {
		m.expire(e)
		m.settle(now)
		if s.isolated {
			r.Op = wire.OpIsolated
			return false
		}
	}
	if e.sess != nil && e.sess.draining {
		m.freeEntry(e)
	}
	return true
}

func (m *machine) lock(now int64, s *session, c *command, r *result) {
	if len(c.Key) == 0 || c.ID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	if !m.checkTTL(c.TTLMs, r) {
		return
	}
	if how, done := s.released.get(c.ID); done {
		setAnswer(how, r)
		return
	}
	if m.waiterOf(s, c.ID) != nil {
		r.Op = wire.OpQueued // a copy of a queued LOCK
		return
	}
	e := m.locks[string(c.Key)] // no allocation: the compiler does not copy for a lookup
	if e != nil && e.sess != nil && (e.sess.draining || overdue(e, now)) && !m.current(e, s, now, r) {
		return
	}
	if e != nil && e.sess == s && e.lockID == c.ID {
		r.Fence = e.fence // a retransmission of the grant
		return
	}
	if e != nil && (e.sess != nil || e.qhead != nil) {
		// Held, or waiters first.
		if !c.Wait {
			r.Op = wire.OpLocked
			s.released.add(c.ID, answeredLocked, &m.leafPool)
			return
		}
		m.es[0] = e
		if m.mayHold(s, c.ID, 1, r) && m.waiterRoom(s, c.ID, m.es[:1], r) {
			m.enqueue(now, s, c, m.es[:1])
			r.Op = wire.OpQueued
		}
		return
	}
	// Caps. Each refusal is final for this id, like LOCKED (see answeredTooMany).
	if m.overCap(s, 1) && !m.mayHold(s, c.ID, 1, r) {
		return
	}
	// The loop may have failed to reserve fences: never hand out one that is not
	// durable. Either way the answer is final for this id; a waiting LOCK waits.
	if now < m.cfg.LockDelayUntil || m.fence >= m.fenceEnd {
		if !c.Wait {
			r.Op, r.Code = wire.OpError, wire.CodeLockDelay
			s.released.add(c.ID, answeredDelay, &m.leafPool)
			return
		}
		m.es[0] = e
		if m.waiterRoom(s, c.ID, m.es[:1], r) {
			m.es[0] = m.entryFor(c.Key)
			m.enqueue(now, s, c, m.es[:1])
			r.Op = wire.OpQueued
		}
		return
	}
	if e == nil {
		e = &entry{key: string(c.Key), heapIdx: -1}
		m.locks[e.key] = e
		m.locksPeak = max(m.locksPeak, len(m.locks))
	} else {
		m.free--
	}
	e.sess, e.lockID, e.fence = s, c.ID, m.fence
	e.deadline = now + int64(c.TTLMs)*1e6
	m.fence++
	m.grants++
	m.grant(s, e)
	r.Fence = e.fence
}

func (m *machine) update(now int64, s *session, c *command, r *result) {
	if len(c.Key) == 0 || c.LockID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	if !m.checkTTL(c.TTLMs, r) {
		return
	}
	e := m.locks[string(c.Key)]
	if e == nil || e.sess != s || e.lockID != c.LockID {
		r.Op, r.Code = wire.OpError, wire.CodeNotHeld
		return
	}
	if overdue(e, now) {
		m.expire(e) // too late to renew: the expiry the budget had left
		r.Op = wire.OpIsolated
		return
	}
	e.deadline = now + int64(c.TTLMs)*1e6
	m.heapFix(e)
	r.Fence = e.fence
}

func (m *machine) unlock(now int64, s *session, c *command, r *result) {
	if len(c.Key) == 0 || c.LockID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	if w := m.waiterOf(s, c.LockID); w != nil {
		m.giveUp(w) // a queued LOCK cancelled, whichever key it names: it leaves the queue, answered for good
		return
	}
	e := m.locks[string(c.Key)]
	if e == nil || e.sess != s || e.lockID != c.LockID {
		// Already gone: OK, and a newer holder is left alone. Or not there yet: an
		// UNLOCK that overtook its LOCK (the client gave up on it). Either way a copy
		// of the LOCK arriving later is not to be queued or granted.
		if c.LockID >= s.floor {
			s.released.add(c.LockID, answeredLocked, &m.leafPool)
		}
		return
	}
	if overdue(e, now) {
		m.expire(e) // released too late: the expiry the budget had left
		r.Op = wire.OpIsolated
		return
	}
	m.release(e)
	if c.LockID >= s.floor {
		s.released.add(c.LockID, answeredReleased, &m.leafPool)
	}
}

// unlockAll releases every lock and isolates every session that held one: O(sessions
// holding locks, their waiters and their keys with waiters), the other entries freed by
// drain. The holders are all isolated (their waiters leave the queues) before any key is
// released, and the keys are handed on after the command (settle), so no holder is
// granted a key by the UNLOCKALL that isolates it.
func (m *machine) unlockAll() {
	first := m.holders
	for s := first; s != nil; s = s.hnext {
		m.markIsolated(s)
	}
	for s := first; s != nil; {
		next := s.hnext
		m.beginRelease(s) // the operator asked: the keys are free now, isolation or not
		s = next
	}
}

// isolate marks s isolated and, when a command is configured, asks the loop to run it.
// With a command, s keeps its keys (unavailable to others) until kindIsolationDone: its
// entries stay in the expiry heap and leave it at their deadlines doing nothing else.
// Without one they are released at once.
func (m *machine) isolate(s *session) {
	m.markIsolated(s)
	if !s.isolating {
		m.beginRelease(s)
	}
}

// markIsolated marks s isolated, asks for its isolation command and takes its waiters
// out of the queues.
func (m *machine) markIsolated(s *session) {
	if s.isolated {
		return
	}
	s.isolated = true
	m.isolations++
	if m.cfg.Isolate {
		s.isolating = true
		m.effects = append(m.effects, isolation{Session: s.id, Info: s.info})
	}
	m.dropWaiters(s)
}
