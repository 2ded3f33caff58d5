// The expiry heap: the held entries ordered by deadline, so that Apply finds the locks
// whose TTL ran out in O(log n) each. Part of the Machine.

package server

// expireLocks isolates the holder of every lock whose deadline is not after now, within
// the budget. Entries of a session already isolated just leave the heap: its keys wait
// for its isolation command, or are being released.
func (m *Machine) expireLocks(now int64) {
	for m.budget > 0 && len(m.expiry) > 0 && m.expiry[0].deadline <= now {
		m.budget--
		m.expire(m.expiry[0])
		m.settle(now)
	}
}

// expire takes e out of the heap and isolates its holder.
func (m *Machine) expire(e *entry) {
	m.heapRemove(e)
	if !e.sess.isolated {
		m.isolate(e.sess)
	}
}

// overdue tells that e is held by a session not yet isolated although its deadline
// passed: an expiry the budget left for a later Apply, to be done before e is looked at.
func overdue(e *entry, now int64) bool {
	return e.sess != nil && !e.sess.isolated && e.deadline <= now
}

// Expiry heap: a binary min-heap of entries by deadline; each entry knows its index, so
// UPDATE and release fix or remove it in O(log n) without lazy garbage. Equal deadlines
// are ordered by fence (unique among held entries), so the order of expiries, and of the
// grants they hand on, is a function of the machine's inputs.

func expiresBefore(a, b *entry) bool {
	return a.deadline < b.deadline || (a.deadline == b.deadline && a.fence < b.fence)
}

func (m *Machine) heapPush(e *entry) {
	e.heapIdx = len(m.expiry)
	m.expiry = append(m.expiry, e)
	m.heapUp(e.heapIdx)
}

func (m *Machine) heapRemove(e *entry) {
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

func (m *Machine) heapFix(e *entry) {
	if e.heapIdx >= 0 {
		m.heapDown(e.heapIdx)
		m.heapUp(e.heapIdx)
	}
}

func (m *Machine) heapSwap(i, j int) {
	h := m.expiry
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}

func (m *Machine) heapUp(i int) {
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

func (m *Machine) heapDown(i int) {
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
