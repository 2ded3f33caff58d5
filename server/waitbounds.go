// Wait bounds: the heap of waiters by the end of their wait, and expiring them. Part of
// the Machine.

package server

// expireWaiters removes, within the budget, the waiters whose bound passed.
func (m *machine) expireWaiters(now int64) {
	for m.budget > 0 && len(m.bounds) > 0 && m.bounds[0].bound <= now {
		m.budget--
		m.giveUp(m.bounds[0])
		m.settle(now)
	}
}

func boundLess(a, b *waiter) bool {
	return a.bound < b.bound || (a.bound == b.bound && a.seq < b.seq)
}

func (m *machine) boundPush(w *waiter) {
	w.heapIdx = len(m.bounds)
	m.bounds = append(m.bounds, w)
	m.boundUp(w.heapIdx)
}

func (m *machine) boundRemove(w *waiter) {
	i := w.heapIdx
	if i < 0 {
		return
	}
	last := len(m.bounds) - 1
	if i != last {
		m.boundSwap(i, last)
	}
	m.bounds[last] = nil
	m.bounds = m.bounds[:last]
	w.heapIdx = -1
	if i != last {
		m.boundDown(i)
		m.boundUp(i)
	}
}

func (m *machine) boundSwap(i, j int) {
	h := m.bounds
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}

func (m *machine) boundUp(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !boundLess(m.bounds[i], m.bounds[p]) {
			break
		}
		m.boundSwap(i, p)
		i = p
	}
}

func (m *machine) boundDown(i int) {
	n := len(m.bounds)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && boundLess(m.bounds[r], m.bounds[l]) {
			c = r
		}
		if !boundLess(m.bounds[c], m.bounds[i]) {
			return
		}
		m.boundSwap(i, c)
		i = c
	}
}
