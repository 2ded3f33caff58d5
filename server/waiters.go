// Waiting (docs/PROTOCOL.md, Waiting): the FIFO queue of each key, the waiters of each
// session, the heap of wait bounds, the keys whose grant waits for the lock-delay or for
// fences, and the hand-on that grants a freed key's head in the same Apply. Part of the
// Machine.
//
// A waiter is one waiting LOCK or LOCKMANY: one queue node per key, linked into every
// key's queue in one step, so two multi-key waiters are in the same order in every queue
// they share. A waiter is granted when it heads the queue of each of its keys and each is
// free; a free key whose head cannot be granted yet stays free but reserved for it.
//
// Every change that frees a key or changes the head of a free key's queue puts the key
// on the hand-on list (Machine.handQ); settle, called after each step of Apply (a
// command, an expiry, a timeout), hands each listed key on in list order. The order is
// part of the machine's determinism (the fences of the grants follow it), and the
// simulation's model follows the same order.

package server

import "github.com/netmutex/netmutex/internal/wire"

// waiter is a queued LOCK or LOCKMANY.
type waiter struct {
	sess    *session
	id      uint64 // the request id: the lock id once granted
	ttl     int64  // ns
	bound   int64  // removed (answered LOCKED) once now reaches it; 0: no bound
	seq     uint64 // enqueue order: breaks ties between equal bounds
	heapIdx int    // index in Machine.bounds, -1 when not in it
	// The session's waiters, in enqueue order.
	sprev, snext *waiter
	nodes        []qnode // one per key, in the request's key order: key i gets fence+i
	one          [1]qnode
}

// qnode is a waiter's place in one key's queue.
type qnode struct {
	w          *waiter
	e          *entry
	prev, next *qnode
}

// waitKey finds a session's waiter by its request id.
type waitKey struct {
	s  *session
	id uint64
}

// waiterOf returns s's waiter with request id, if any. No cost without waiters.
func (m *machine) waiterOf(s *session, id uint64) *waiter {
	if len(m.waiters) == 0 {
		return nil
	}
	return m.waiters[waitKey{s, id}]
}

// waiterRoom checks the waiter caps for a new waiter of s on the keys of es (nil: a key
// without an entry yet), and sets r to TOO_MANY_WAITERS if one is reached, recorded as
// final for id.
func (m *machine) waiterRoom(s *session, id uint64, es []*entry, r *result) bool {
	full := false
	if max := m.cfg.MaxWaitersPerSession; max > 0 && s.nwaiters >= max {
		full = true
	}
	if max := m.cfg.MaxWaitersPerKey; max > 0 {
		for _, e := range es {
			if e != nil && e.nwait >= max {
				full = true
			}
		}
	}
	if full {
		r.Op, r.Code = wire.OpError, wire.CodeTooManyWaiters
		s.released.add(id, answeredTooManyWaiters, &m.leafPool)
		return false
	}
	return true
}

// overCap tells, cheaply, whether n more keys of s might pass a lock cap (mayHold then
// decides and refuses).
func (m *machine) overCap(s *session, n int) bool {
	return (m.cfg.MaxLocksPerSession > 0 && s.nlocks+s.waitKeys+n > m.cfg.MaxLocksPerSession) ||
		(m.cfg.MaxLocks > 0 && m.held+m.waitKeys+n > m.cfg.MaxLocks)
}

// mayHold checks the lock caps for n more keys of s (waiting keys count as held), and
// sets r to the refusal if one fails, recorded as final for id.
func (m *machine) mayHold(s *session, id uint64, n int, r *result) bool {
	if max := m.cfg.MaxLocksPerSession; max > 0 && s.nlocks+s.waitKeys+n > max {
		r.Op, r.Code = wire.OpError, wire.CodeTooManyLocks
		s.released.add(id, answeredTooMany, &m.leafPool)
		return false
	}
	if max := m.cfg.MaxLocks; max > 0 && m.held+m.waitKeys+n > max {
		r.Op, r.Code = wire.OpError, wire.CodeServerFull
		s.released.add(id, answeredFull, &m.leafPool)
		return false
	}
	return true
}

// entryFor returns key's entry, creating a free one.
func (m *machine) entryFor(key []byte) *entry {
	if e := m.locks[string(key)]; e != nil {
		return e
	}
	e := &entry{key: string(key), heapIdx: -1}
	m.locks[e.key] = e
	m.locksPeak = max(m.locksPeak, len(m.locks))
	m.free++
	return e
}

// enqueue queues s's request id for the keys of es (entries, created by entryFor), in
// every queue at once, and hands the first key on in case the waiter heads every queue
// of free keys (then the grant waits for the lock-delay or for fences: it stalls).
func (m *machine) enqueue(now int64, s *session, c *command, es []*entry) {
	w := &waiter{sess: s, id: c.ID, ttl: int64(c.TTLMs) * 1e6, heapIdx: -1}
	if c.WaitMs > 0 {
		w.bound = now + int64(c.WaitMs)*1e6
	}
	m.wseq++
	w.seq = m.wseq
	if len(es) == 1 {
		w.nodes = w.one[:]
	} else {
		w.nodes = make([]qnode, len(es))
	}
	for i, e := range es {
		n := &w.nodes[i]
		n.w, n.e = w, e
		n.prev, n.next = e.qtail, nil
		if e.qtail != nil {
			e.qtail.next = n
		} else {
			e.qhead = n
			if e.sess != nil {
				m.makeHot(e)
			}
		}
		e.qtail = n
		e.nwait++
	}
	w.sprev, w.snext = s.wtail, nil
	if s.wtail != nil {
		s.wtail.snext = w
	} else {
		s.whead = w
	}
	s.wtail = w
	s.nwaiters++
	s.waitKeys += len(es)
	m.waitKeys += len(es)
	m.waiters[waitKey{s, w.id}] = w
	if w.bound != 0 {
		m.boundPush(w)
	}
	if es[0].sess == nil && es[0].qhead == &w.nodes[0] {
		m.handQ = append(m.handQ, es[0])
	}
}

// removeWaiter takes w out of every queue and every index. A free key whose head it was
// goes on the hand-on list; a held key left without waiters is no longer hot.
func (m *machine) removeWaiter(w *waiter) {
	for i := range w.nodes {
		n := &w.nodes[i]
		e := n.e
		head := e.qhead == n
		if n.prev != nil {
			n.prev.next = n.next
		} else {
			e.qhead = n.next
		}
		if n.next != nil {
			n.next.prev = n.prev
		} else {
			e.qtail = n.prev
		}
		n.prev, n.next, n.e = nil, nil, nil
		e.nwait--
		switch {
		case e.sess != nil && e.qhead == nil:
			m.makeCold(e)
		case e.sess == nil && head && e.qhead != nil:
			m.handQ = append(m.handQ, e)
		}
	}
	m.forget(w)
}

// forget drops w from its session's list, the waiter index and the bound heap; its
// nodes are out of the queues already.
func (m *machine) forget(w *waiter) {
	s := w.sess
	if w.sprev != nil {
		w.sprev.snext = w.snext
	} else {
		s.whead = w.snext
	}
	if w.snext != nil {
		w.snext.sprev = w.sprev
	} else {
		s.wtail = w.sprev
	}
	w.sprev, w.snext = nil, nil
	s.nwaiters--
	s.waitKeys -= len(w.nodes)
	m.waitKeys -= len(w.nodes)
	delete(m.waiters, waitKey{s, w.id})
	m.boundRemove(w)
	m.budget -= len(w.nodes)
}

// giveUp removes w and answers its request LOCKED for good: its bound passed, or its
// client cancelled it (UNLOCK of its id).
func (m *machine) giveUp(w *waiter) {
	s := w.sess
	m.removeWaiter(w)
	if w.id >= s.floor {
		s.released.add(w.id, answeredLocked, &m.leafPool)
	}
}

// dropWaiters takes every waiter of s out of the queues: its session ended or was
// isolated. O(its waiting keys), bounded by the session's caps.
func (m *machine) dropWaiters(s *session) {
	for s.whead != nil {
		m.removeWaiter(s.whead)
	}
}

// settle hands on every key on the hand-on list, in order; handing on may list more.
func (m *machine) settle(now int64) {
	if len(m.handQ) == 0 {
		return
	}
	for i := 0; i < len(m.handQ); i++ {
		m.handOn(m.handQ[i], now)
	}
	clear(m.handQ)
	m.handQ = m.handQ[:0]
}

// handOn grants free key e to the head of its queue if it can be granted: waiters whose
// bound passed are removed first; a head that is not at the head of every queue of its
// keys, or one of whose keys is held, keeps e reserved; a grant that must wait for the
// lock-delay's end or for fences stalls e until then.
func (m *machine) handOn(e *entry, now int64) {
	for e.sess == nil && e.qhead != nil {
		w := e.qhead.w
		if w.bound != 0 && w.bound <= now {
			m.giveUp(w)
			continue
		}
		for i := range w.nodes {
			if n := &w.nodes[i]; n.e.sess != nil || n.e.qhead != n {
				return // reserved for w
			}
		}
		if !m.canGrant(len(w.nodes), now) {
			m.stall(e)
			return
		}
		m.grantWaiter(w, now)
		return
	}
}

// canGrant tells whether n fences may be handed out now.
func (m *machine) canGrant(n int, now int64) bool {
	return now >= m.cfg.LockDelayUntil && m.fenceEnd-m.fence >= uint64(n)
}

// grantWaiter grants every key of w, which heads every queue and finds every key free,
// and pushes its OK (Tag -1: the network stage sends it to the session's address).
func (m *machine) grantWaiter(w *waiter, now int64) {
	s := w.sess
	first := m.fence
	for i := range w.nodes {
		e := w.nodes[i].e
		e.qhead = w.nodes[i].next
		if e.qhead != nil {
			e.qhead.prev = nil
		} else {
			e.qtail = nil
		}
		e.nwait--
		w.nodes[i].next, w.nodes[i].e = nil, nil
		m.free--
		m.take(s, e, w.id, now+w.ttl)
	}
	m.forget(w)
	m.pushed = append(m.pushed, result{Op: wire.OpOK, Tag: -1, Session: s.id, ID: w.id, Fence: first})
}

// take gives free entry e to s as lock id with the next fence.
func (m *machine) take(s *session, e *entry, id uint64, deadline int64) {
	e.sess, e.lockID, e.fence, e.deadline = s, id, m.fence, deadline
	m.fence++
	m.grants++
	m.grant(s, e)
}

// stall lists e to be handed on once grants may resume (Apply: unstall).
func (m *machine) stall(e *entry) {
	if e.stalled {
		return
	}
	e.stalled = true
	e.snext = nil
	if m.stallTail != nil {
		m.stallTail.snext = e
	} else {
		m.stallHead = e
	}
	m.stallTail = e
	m.nstalled++
}

// unstall hands on, within the budget, the keys stalled before this Apply, once grants
// may resume: the first Apply at or after the lock-delay's end, or with fences again.
func (m *machine) unstall(now int64) {
	if m.stallHead == nil || !m.canGrant(1, now) {
		return
	}
	for n := m.nstalled; n > 0 && m.budget > 0; n-- {
		e := m.stallHead
		m.stallHead, e.snext = e.snext, nil
		if m.stallHead == nil {
			m.stallTail = nil
		}
		e.stalled = false
		m.nstalled--
		m.budget--
		m.handQ = append(m.handQ, e)
		m.settle(now)
	}
}

// Hot entries: a held entry with waiters is on its session's hot list, so that the end
// of the session hands it on at once (beginRelease), while its other entries are freed a
// budget at a time.

func (m *machine) makeHot(e *entry) {
	if e.hot {
		return
	}
	s := e.sess
	s.unlink(e)
	s.linkHot(e)
}

func (m *machine) makeCold(e *entry) {
	if !e.hot {
		return
	}
	s := e.sess
	s.unlink(e)
	s.link(e)
}

// The heap of wait bounds: waiters with a bound, by (bound, seq).

// Read-only views, for tests.

// Waiters is the number of queued LOCK and LOCKMANY requests.
func (m *machine) Waiters() int { return len(m.waiters) }

// Queue lists key's waiters, head first, as (session, request id) pairs.
func (m *machine) Queue(key string) [][2]uint64 {
	e := m.locks[key]
	if e == nil {
		return nil
	}
	var q [][2]uint64
	for n := e.qhead; n != nil; n = n.next {
		q = append(q, [2]uint64{n.w.sess.id, n.w.id})
	}
	return q
}
