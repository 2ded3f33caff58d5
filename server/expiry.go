// The expiry heap: the held entries ordered by deadline, so that Apply finds the locks
// whose TTL ran out in O(log n) each. Part of the Machine.

package server

import (
	"cmp"
	"slices"
)

// expireLocks isolates the holder of every lock whose deadline is not after now, within
// the budget. Entries of a session already isolated (or released) just leave the heap:
// its keys wait for its isolation command, or are being released.
//
// The locks due at one deadline (a batch's LOCKs share their time) are expired in fence
// order: an isolation hands the session's keys with waiters on (without an isolation
// command), so the order decides the grants' fences, and fence order makes it a
// function of the machine's inputs that the simulation's model can follow. The heap
// itself compares deadlines only: a tie-break there made every release of a lock sift
// through the batch's equal deadlines (BenchmarkMachineLockUnlock).
func (m *machine) expireLocks(now int64) {
	for m.budget > 0 && len(m.expiry) > 0 && m.expiry[0].deadline <= now {
		d := m.expiry[0].deadline
		due := m.due[:0]
		for m.budget > 0 && len(m.expiry) > 0 && m.expiry[0].deadline == d {
			m.budget--
			e := m.expiry[0]
			m.heapRemove(e)
			due = append(due, dueLock{e, e.fence})
		}
		if len(due) > 1 {
			slices.SortFunc(due, func(a, b dueLock) int { return cmp.Compare(a.fence, b.fence) })
		}
		for _, x := range due {
			// Skip a lock an earlier expiry released (and perhaps handed on since).
			if s := x.e.sess; s != nil && x.e.fence == x.fence && !s.isolated && !s.draining {
				m.isolate(s)
				m.settle(now)
			}
		}
		clear(due)
		m.due = due[:0]
	}
}

// dueLock is a lock taken from the heap at its deadline, with its fence then.
type dueLock struct {
	e     *entry
	fence uint64
}

// expire takes e out of the heap and isolates its holder.
func (m *machine) expire(e *entry) {
	m.heapRemove(e)
	if !e.sess.isolated && !e.sess.draining {
		m.isolate(e.sess)
	}
}

// overdue tells that e is held by a session not yet isolated (nor released) although
// its deadline passed: an expiry the budget left for a later Apply, to be done before e
// is looked at.
func overdue(e *entry, now int64) bool {
	return e.sess != nil && !e.sess.isolated && !e.sess.draining && e.deadline <= now
}

// Expiry heap: a binary min-heap of entries by deadline; each entry knows its index, so
// UPDATE and release fix or remove it in O(log n) without lazy garbage.

func expiresBefore(a, b *entry) bool {
	return a.deadline < b.deadline
}

func (m *machine) heapPush(e *entry) {
	e.heapIdx = len(m.expiry)
	m.expiry = append(m.expiry, e)
	m.heapUp(e.heapIdx)
}

func (m *machine) heapRemove(e *entry) {
	i := e.heapIdx
	if i < 0 {
		return
	}
	last := len(m.expiry) - 1
	if i != last {
		m.heapSwap(i, last)
	}
	m.expiry[last] = nil
	m.expiry = m.expiry[:last]
	e.heapIdx = -1
	if i != last {
		m.heapDown(i)
		m.heapUp(i)
	}
}

func (m *machine) heapFix(e *entry) {
	if e.heapIdx >= 0 {
		m.heapDown(e.heapIdx)
		m.heapUp(e.heapIdx)
	}
}

func (m *machine) heapSwap(i, j int) {
	h := m.expiry
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}

func (m *machine) heapUp(i int) {
	h := m.expiry
	for i > 0 {
		p := (i - 1) / 2
		if !expiresBefore(h[i], h[p]) {
			break
		}
		m.heapSwap(i, p)
		i = p
	}
}

func (m *machine) heapDown(i int) {
	h := m.expiry
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && expiresBefore(h[r], h[l]) {
			c = r
		}
		if !expiresBefore(h[c], h[i]) {
			return
		}
		m.heapSwap(i, c)
		i = c
	}
}
