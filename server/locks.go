// The lock table: key → entry (holder session, lock id, fence, deadline), and the
// release and reuse of its entries. Part of the Machine.

package server

import (
	"iter"
	"net/netip"
)

// minFreeEntries is how many free lock-table entries are always kept for reuse, so a
// working set of keys locked again and again never allocates; beyond it, free entries
// are swept once they outnumber the held ones (amortised O(1) per release).
// 2^14: an entry is 88 bytes plus its key and map slot, so the kept ones cost a few
// megabytes at most.
const minFreeEntries = 1 << 14

// entry is one key of the lock table. A free entry (sess == nil) stays in the map for
// reuse until swept.
type entry struct {
	key      string
	sess     *session
	lockID   uint64
	fence    uint64
	deadline int64
	heapIdx  int // index in Machine.expiry, -1 when not in it
	// The session's list of held entries (hot: its list of held entries with waiters).
	prev, next *entry
	hot        bool
	// The key's queue of waiters (waiters.go), head first. A free entry with waiters is
	// reserved for its head, or stalled (listed from Machine.stallHead by snext) until
	// grants may resume.
	qhead, qtail *qnode
	nwait        int
	stalled      bool
	snext        *entry
}

// applyBudget bounds the work of one Apply beyond its commands: expiries looked at,
// sessions timed out, entries of released sessions freed. Past it the rest waits for the
// next Apply (the loop applies at least every tick while the machine is not Idle), so a
// million locks expiring together cost many short Applies, not one long stall. What is
// left over is never visible: a LOCK, UPDATE or UNLOCK of a key whose deadline passed
// expires it first, a session's request past its timeout times it out first, and the
// keys of a released session are free at once (Locks, Holder, LOCK).
const applyBudget = 4096

// shrinkMin: a table whose peak size reached it is rebuilt once it holds less than a
// quarter of that peak, so that Go frees the buckets a flood left behind.
const shrinkMin = 4096

// grant links e, just given to s: on its hot list if waiters queue behind.
func (m *machine) grant(s *session, e *entry) {
	if s.nlocks == 0 {
		m.holdersPush(s)
	}
	if e.qhead != nil {
		s.linkHot(e)
	} else {
		s.link(e)
	}
	m.held++
	m.heapPush(e)
}

// release frees e, a lock its holder releases; the entry stays in the map for reuse.
func (m *machine) release(e *entry) {
	s := e.sess
	m.held--
	m.freeEntry(e)
	if s.nlocks == 0 {
		m.holdersRemove(s)
	}
}

// freeEntry unlinks e from its session and the expiry heap and marks it free; a key
// with waiters goes on the hand-on list (settle grants its head).
func (m *machine) freeEntry(e *entry) {
	e.sess.unlink(e)
	m.heapRemove(e)
	e.sess = nil
	e.lockID, e.fence, e.deadline = 0, 0, 0
	m.free++
	if e.qhead != nil {
		m.handQ = append(m.handQ, e)
	}
}

// beginRelease releases every lock s holds: at once for Locks, Holder and LOCK, and
// entry by entry within the budget of each Apply (drain). The entries with waiters are
// freed at once, so that settle hands them on in the same step: O(those), each paid for
// by the waiter it grants; the rest is O(1).
func (m *machine) beginRelease(s *session) {
	if s.draining {
		return
	}
	for s.hotHead != nil {
		m.release(s.hotHead)
		m.budget--
	}
	if s.nlocks == 0 {
		return
	}
	s.draining = true
	m.held -= s.nlocks
	m.holdersRemove(s)
	s.dnext = nil
	if m.drainTail != nil {
		m.drainTail.dnext = s
	} else {
		m.drainHead = s
	}
	m.drainTail = s
}

// drain frees entries of released sessions while the budget lasts.
func (m *machine) drain() {
	for s := m.drainHead; s != nil; s = m.drainHead {
		for s.locks != nil && m.budget > 0 {
			m.freeEntry(s.locks)
			m.budget--
		}
		if s.locks != nil {
			return
		}
		s.draining = false
		m.drainHead, s.dnext = s.dnext, nil
		if m.drainHead == nil {
			m.drainTail = nil
		}
	}
}

// sweep deletes the free entries from the lock table, and rebuilds the table when a
// flood left it far below its peak.
func (m *machine) sweep() {
	free := 0
	for k, e := range m.locks {
		switch {
		case e.sess != nil:
		case e.qhead != nil || e.stalled:
			free++ // reserved for its waiters
		default:
			delete(m.locks, k)
		}
	}
	m.free = free
	if n := len(m.locks); m.locksPeak >= shrinkMin && n < m.locksPeak/4 {
		locks := make(map[string]*entry, n)
		for k, e := range m.locks {
			locks[k] = e
		}
		m.locks, m.locksPeak = locks, n
		m.rebuilds++
	}
}

// shrink rebuilds the session tables and the expiry heap when a flood left them far
// below their peak. O(size) once the size fell below a quarter of the peak: amortised
// O(1) per session or lock that went.
func (m *machine) shrink() {
	if n := len(m.sessions); m.sessPeak >= shrinkMin && n < m.sessPeak/4 {
		sessions := make(map[uint64]*session, n)
		nonces := make(map[uint64]*session, n)
		for id, s := range m.sessions {
			sessions[id], nonces[s.nonce] = s, s
		}
		perAddr := make(map[netip.Addr]int, len(m.perAddr))
		for a, k := range m.perAddr {
			perAddr[a] = k
		}
		m.sessions, m.nonces, m.perAddr, m.sessPeak = sessions, nonces, perAddr, n
		m.rebuilds++
	}
	if c := cap(m.expiry); c >= shrinkMin && len(m.expiry) < c/4 {
		m.expiry = append(make([]*entry, 0, 2*len(m.expiry)), m.expiry...)
		m.rebuilds++
	}
}

// Holder tells who holds key: the session, the lock id and the fence. ok is false when the
// key is free. A key of an isolated session waiting for its isolation command is held.
func (m *machine) Holder(key string) (session, lockID, fence uint64, ok bool) {
	e := m.locks[key]
	if e == nil || e.sess == nil || e.sess.draining {
		return 0, 0, 0, false
	}
	return e.sess.id, e.lockID, e.fence, true
}

// Locks is the number of keys held.
func (m *machine) Locks() int { return m.held }

// LockRow is one held lock as the operator's view (GET /locks) shows it.
type LockRow struct {
	Key      string
	Fence    uint64
	Session  uint64 // the holder
	Info     string // the holder's IsolationInfo
	Deadline int64  // in the time base of Apply's now
	Waiters  int    // waiting LOCKs and LOCKMANYs queued for the key
}

// HeldLocks yields the held locks (Locks counts them; a key of an isolated session
// waiting for its isolation command is held), in the lock table's order, which is no
// order. It only reads the machine, and must be iterated by the goroutine that owns it.
//
// It may be paused between Applies (iter.Pull), so that a large table is read a part at
// a time: then, as in a range over a map that changes, a lock released before it is
// reached is not yielded, one taken meanwhile may be or not, and each row is as of the
// moment it is yielded. O(1) per entry of the table, free ones included.
func (m *machine) HeldLocks() iter.Seq[LockRow] {
	return func(yield func(LockRow) bool) {
		for _, e := range m.locks {
			if e.sess == nil || e.sess.draining {
				continue
			}
			r := LockRow{Key: e.key, Fence: e.fence, Session: e.sess.id, Info: e.sess.info,
				Deadline: e.deadline, Waiters: e.nwait}
			if !yield(r) {
				return
			}
		}
	}
}
