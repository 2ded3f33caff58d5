// Sessions: the session record, its list of held entries, the LRU of sessions by
// last-seen time that session timeouts walk, and the end of a session. Part of the
// Machine; owned by whoever owns the Machine.

package server

import (
	"iter"
	"net/netip"
)

type session struct {
	id        uint64
	nonce     uint64
	info      string
	peer      *peerInfo  // the far end of its CONNECT, for the network stage
	addr      netip.Addr // the IP counted against MaxSessionsPerAddr; invalid: none
	lastSeen  int64
	floor     uint64
	isolated  bool // every request gets ISOLATED
	isolating bool // its isolation command runs; its keys stay held until it ends
	// draining: its keys are released (Locks, Holder and LOCK see them free) but their
	// entries are still linked, freed a budget at a time (see drain).
	draining bool
	released releasedSet
	nlocks   int    // entries linked on locks and hot
	locks    *entry // head of the linked entries without waiters
	// The held entries with waiters, in the order they got them: freed at once when the
	// session's locks are released, so their waiters are granted in the same step.
	hotHead, hotTail *entry
	// Its waiters (waiters.go), in enqueue order; waitKeys counts their keys, which
	// count as held against the lock caps.
	whead, wtail *waiter
	nwaiters     int
	waitKeys     int
	// LRU list ordered by lastSeen, oldest first.
	prev, next *session
	// The list of sessions that hold locks (nlocks > 0, not draining), for UNLOCKALL.
	hprev, hnext *session
	// The queue of draining sessions.
	dnext *session
}

// link adds e to the entries s holds.
func (s *session) link(e *entry) {
	e.prev, e.next, e.hot = nil, s.locks, false
	if s.locks != nil {
		s.locks.prev = e
	}
	s.locks = e
	s.nlocks++
}

// linkHot adds e, which has waiters, to the end of the hot entries s holds.
func (s *session) linkHot(e *entry) {
	e.prev, e.next, e.hot = s.hotTail, nil, true
	if s.hotTail != nil {
		s.hotTail.next = e
	} else {
		s.hotHead = e
	}
	s.hotTail = e
	s.nlocks++
}

// unlink removes e from the entries s holds.
func (s *session) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else if e.hot {
		s.hotHead = e.next
	} else {
		s.locks = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else if e.hot {
		s.hotTail = e.prev
	}
	e.prev, e.next, e.hot = nil, nil, false
	s.nlocks--
}

// LRU of sessions by last-seen time. now never goes backwards, so moving a session to
// the tail on every request keeps the list sorted.

// touch records that s was heard from at now.
func (m *machine) touch(s *session, now int64) {
	s.lastSeen = now
	if m.lruTail == s {
		return
	}
	m.lruRemove(s)
	m.lruPush(s)
}

func (m *machine) lruPush(s *session) {
	s.prev, s.next = m.lruTail, nil
	if m.lruTail != nil {
		m.lruTail.next = s
	} else {
		m.lruHead = s
	}
	m.lruTail = s
}

func (m *machine) lruRemove(s *session) {
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		m.lruHead = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		m.lruTail = s.prev
	}
	s.prev, s.next = nil, nil
}

// The list of sessions that hold locks.

func (m *machine) holdersPush(s *session) {
	s.hprev, s.hnext = nil, m.holders
	if m.holders != nil {
		m.holders.hprev = s
	}
	m.holders = s
}

func (m *machine) holdersRemove(s *session) {
	if s.hprev != nil {
		s.hprev.hnext = s.hnext
	} else if m.holders == s {
		m.holders = s.hnext
	}
	if s.hnext != nil {
		s.hnext.hprev = s.hprev
	}
	s.hprev, s.hnext = nil, nil
}

// expireSessions closes sessions silent for SessionTimeout, a budget at a time; a
// request of a session past its timeout but not yet looked at has it looked at first
// (machine.apply), so the budget never lets a session outlive its timeout.
func (m *machine) expireSessions(now int64) {
	for s := m.lruHead; s != nil && m.budget > 0 && m.timedOut(s, now); s = m.lruHead {
		m.budget--
		m.timeout(s, now)
		m.settle(now)
	}
}

func (m *machine) timedOut(s *session, now int64) bool {
	return m.cfg.SessionTimeout > 0 && now-s.lastSeen >= m.cfg.SessionTimeout
}

// timeout closes s. One that holds locks is isolated instead, and one whose isolation
// command still runs waits for it; both are looked at again one timeout later.
func (m *machine) timeout(s *session, now int64) {
	switch {
	case s.nlocks > 0 && !s.isolated:
		m.isolate(s)
		m.touch(s, now)
	case s.isolating:
		m.touch(s, now)
	default:
		m.deleteSession(s)
	}
}

// deleteSession ends s: its waiters leave their queues, its locks are released and it
// is forgotten.
func (m *machine) deleteSession(s *session) {
	m.dropWaiters(s)
	m.beginRelease(s)
	m.lruRemove(s)
	delete(m.sessions, s.id)
	delete(m.nonces, s.nonce)
	if s.addr.IsValid() {
		if n := m.perAddr[s.addr]; n > 1 {
			m.perAddr[s.addr] = n - 1
		} else {
			delete(m.perAddr, s.addr)
		}
	}
	s.released.free(&m.leafPool)
	s.peer = nil
	m.ended++
}

// SessionsEnded is how many sessions have ended (DISCONNECT, timeout).
func (m *machine) SessionsEnded() uint64 { return m.ended }

// Sessions is the number of sessions, isolated ones included.
func (m *machine) Sessions() int { return len(m.sessions) }

// peerInfo is the far end kept with session at its CONNECT (command.peerInfo); nil if there is
// no such session or its CONNECT carried none.
func (m *machine) peerInfo(session uint64) *peerInfo {
	if s := m.sessions[session]; s != nil {
		return s.peer
	}
	return nil
}

// Isolated tells whether session exists and is isolated.
func (m *machine) Isolated(session uint64) bool {
	s := m.sessions[session]
	return s != nil && s.isolated
}

// isolating lists the sessions whose isolation command has not been reported ended, in
// LRU order: a new cluster leader runs them again, since their end never reached the log.
func (m *machine) isolating() iter.Seq2[uint64, string] {
	return func(yield func(uint64, string) bool) {
		for s := m.lruHead; s != nil; s = s.next {
			if s.isolating && !yield(s.id, s.info) {
				return
			}
		}
	}
}
