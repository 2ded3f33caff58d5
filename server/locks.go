// The lock table: key → entry (holder session, lock id, fence, deadline), and the
// release and reuse of its entries. Part of the Machine.

package server

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
	// The session's list of held entries.
	prev, next *entry
}

// releaseAll releases every lock s holds.
func (m *Machine) releaseAll(s *session) {
	for s.locks != nil {
		m.release(s.locks)
	}
}

// release frees e; the entry stays in the map for reuse.
func (m *Machine) release(e *entry) {
	e.sess.unlink(e)
	m.heapRemove(e)
	e.sess = nil
	e.lockID, e.fence, e.deadline = 0, 0, 0
	m.held--
	m.free++
}

// sweep deletes the free entries from the lock table.
func (m *Machine) sweep() {
	for k, e := range m.locks {
		if e.sess == nil {
			delete(m.locks, k)
		}
	}
	m.free = 0
}

// Holder tells who holds key: the session, the lock id and the fence. ok is false when the
// key is free. A key of an isolated session waiting for its isolation command is held.
func (m *Machine) Holder(key string) (session, lockID, fence uint64, ok bool) {
	e := m.locks[key]
	if e == nil || e.sess == nil {
		return 0, 0, 0, false
	}
	return e.sess.id, e.lockID, e.fence, true
}

// Locks is the number of keys held.
func (m *Machine) Locks() int { return m.held }
