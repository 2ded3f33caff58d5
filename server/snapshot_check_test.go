package server

import (
	"fmt"
	"net/netip"
)

// checkMachine checks the machine's structure between Applies: every list, index, heap
// and count agrees with the others, the counts restoreMachine derives rather than reads
// included. It is what a restored machine must pass, and it holds for every machine the
// commands build, which checks the derivations. It does not check what depends on time
// or configuration (checkQueues and checkCaps do).
func checkMachine(m *machine) error {
	if len(m.pushed) != 0 || len(m.handQ) != 0 || m.effects != nil {
		return fmt.Errorf("scratch not empty between Applies: %d pushed, %d to hand on", len(m.pushed), len(m.handQ))
	}
	if m.fence > m.fenceEnd {
		return fmt.Errorf("fence %d past its limit %d", m.fence, m.fenceEnd)
	}
	if c := cap(m.expiry); c >= shrinkMin && len(m.expiry) < c/4 {
		return fmt.Errorf("expiry heap of %d in a capacity of %d: Apply shrinks it", len(m.expiry), c)
	}
	// The drain queue: the draining sessions, live or ended.
	draining := map[*session]bool{}
	var last *session
	for s := m.drainHead; s != nil; s = s.dnext {
		if !s.draining || draining[s] || s.hotHead != nil {
			return fmt.Errorf("drain queue: session %x not draining, twice, or with hot entries", s.id)
		}
		draining[s], last = true, s
	}
	if m.drainTail != last {
		return fmt.Errorf("drain queue: wrong tail")
	}
	// Live sessions: the LRU list, the tables.
	perAddr := map[netip.Addr]int{}
	n, held, waiters, waitKeys := 0, 0, 0, 0
	var prev *session
	for s := m.lruHead; s != nil; s = s.next {
		if s.prev != prev || m.sessions[s.id] != s || m.nonces[s.nonce] != s {
			return fmt.Errorf("session %x: LRU links or tables wrong", s.id)
		}
		if s.draining != draining[s] {
			return fmt.Errorf("session %x: draining=%v, in the drain queue=%v", s.id, s.draining, draining[s])
		}
		if s.peer == nil && s.addr.IsValid() {
			return fmt.Errorf("session %x: counted at %v without a peer", s.id, s.addr)
		}
		if s.addr.IsValid() {
			perAddr[s.addr]++
		}
		if !s.draining {
			held += s.nlocks
		}
		if err := checkSessionLinks(m, s); err != nil {
			return err
		}
		waiters += s.nwaiters
		waitKeys += s.waitKeys
		prev = s
		n++
	}
	if m.lruTail != prev || n != len(m.sessions) || n != len(m.nonces) {
		return fmt.Errorf("LRU list of %d, %d sessions, %d nonces", n, len(m.sessions), len(m.nonces))
	}
	if len(perAddr) != len(m.perAddr) {
		return fmt.Errorf("perAddr has %d addresses, sessions show %d", len(m.perAddr), len(perAddr))
	}
	for a, k := range perAddr {
		if m.perAddr[a] != k {
			return fmt.Errorf("perAddr[%v] = %d, sessions show %d", a, m.perAddr[a], k)
		}
	}
	for s := range draining {
		if m.sessions[s.id] != s {
			if err := checkSessionLinks(m, s); err != nil {
				return err
			}
			if s.whead != nil {
				return fmt.Errorf("ended session %x has waiters", s.id)
			}
		}
	}
	if held != m.held || waiters != len(m.waiters) || waitKeys != m.waitKeys {
		return fmt.Errorf("held %d (counted %d), waiters %d (indexed %d), waiting keys %d (counted %d)",
			held, m.held, waiters, len(m.waiters), waitKeys, m.waitKeys)
	}
	if err := checkHolderList(m); err != nil {
		return err
	}
	if err := checkLockTable(m, draining); err != nil {
		return err
	}
	return checkHeapsAndStalls(m)
}

// checkSessionLinks checks s's lists of held entries and of waiters, and its released set.
func checkSessionLinks(m *machine, s *session) error {
	nlocks := 0
	for _, hot := range []bool{false, true} {
		head, tail := s.locks, (*entry)(nil)
		if hot {
			head = s.hotHead
		}
		var prev *entry
		for e := head; e != nil; e = e.next {
			if e.prev != prev || e.sess != s || e.hot != hot || m.locks[e.key] != e {
				return fmt.Errorf("session %x: entry %q badly linked", s.id, e.key)
			}
			prev = e
			nlocks++
		}
		if hot {
			tail = s.hotTail
			if tail != prev {
				return fmt.Errorf("session %x: hot tail wrong", s.id)
			}
		}
	}
	if nlocks != s.nlocks {
		return fmt.Errorf("session %x: %d entries linked, %d counted", s.id, nlocks, s.nlocks)
	}
	nw, keys := 0, 0
	var prev *waiter
	for w := s.whead; w != nil; w = w.snext {
		if w.sprev != prev || w.sess != s || m.waiters[waitKey{s, w.id}] != w || len(w.nodes) == 0 {
			return fmt.Errorf("session %x: waiter %d badly linked", s.id, w.id)
		}
		if s.isolated {
			return fmt.Errorf("isolated session %x has waiters", s.id)
		}
		for i := range w.nodes {
			if q := &w.nodes[i]; q.w != w || q.e == nil || m.locks[q.e.key] != q.e {
				return fmt.Errorf("session %x: waiter %d: node %d wrong", s.id, w.id, i)
			}
		}
		if (w.bound != 0) != (w.heapIdx >= 0) {
			return fmt.Errorf("session %x: waiter %d: bound %d, heap index %d", s.id, w.id, w.bound, w.heapIdx)
		}
		prev = w
		nw++
		keys += len(w.nodes)
	}
	if s.wtail != prev || nw != s.nwaiters || keys != s.waitKeys {
		return fmt.Errorf("session %x: %d waiters of %d keys, counted %d of %d", s.id, nw, keys, s.nwaiters, s.waitKeys)
	}
	r := &s.released
	ids := 0
	var last uint64
	for i, l := range r.leaves {
		if len(l.ids) == 0 || len(l.ids) != len(l.how) || len(l.ids) > leafCap {
			return fmt.Errorf("session %x: released leaf %d of %d ids", s.id, i, len(l.ids))
		}
		for j, id := range l.ids {
			if ids > 0 && id <= last || l.how[j] > answeredTooManyWaiters {
				return fmt.Errorf("session %x: released ids out of order or answer %d", s.id, l.how[j])
			}
			last = id
			ids++
		}
	}
	if ids != r.n || ids > maxReleased {
		return fmt.Errorf("session %x: %d released ids, counted %d", s.id, ids, r.n)
	}
	return nil
}

// checkHolderList checks the list of sessions holding locks: exactly the live ones that
// hold entries and are not draining.
func checkHolderList(m *machine) error {
	listed := map[*session]bool{}
	var prev *session
	for s := m.holders; s != nil; s = s.hnext {
		if s.hprev != prev || listed[s] || m.sessions[s.id] != s || s.draining || s.nlocks == 0 {
			return fmt.Errorf("holders: session %x badly listed", s.id)
		}
		listed[s], prev = true, s
	}
	for _, s := range m.sessions {
		if (s.nlocks > 0 && !s.draining) != listed[s] {
			return fmt.Errorf("holders: session %x holds %d (draining %v), listed %v", s.id, s.nlocks, s.draining, listed[s])
		}
	}
	return nil
}

// checkLockTable checks the lock table: holders, queues in seq order, hot flags, heap
// indexes, and the free count.
func checkLockTable(m *machine, draining map[*session]bool) error {
	free, nodes := 0, 0
	for k, e := range m.locks {
		if e.key != k || k == "" {
			return fmt.Errorf("entry %q under key %q", e.key, k)
		}
		if s := e.sess; s == nil {
			free++
		} else if m.sessions[s.id] != s && !draining[s] {
			return fmt.Errorf("key %q held by a session that is neither live nor draining", k)
		}
		var prev *qnode
		n := 0
		for q := e.qhead; q != nil; q = q.next {
			if q.prev != prev || q.e != e || (prev != nil && prev.w.seq >= q.w.seq) {
				return fmt.Errorf("key %q: queue links or seq order broken", k)
			}
			prev = q
			n++
		}
		if e.qtail != prev || e.nwait != n {
			return fmt.Errorf("key %q: queue tail or count wrong", k)
		}
		nodes += n
		if e.sess != nil && e.hot != (n > 0) {
			return fmt.Errorf("key %q: hot=%v with %d waiters", k, e.hot, n)
		}
		if i := e.heapIdx; i >= len(m.expiry) || (i >= 0 && m.expiry[i] != e) || i < -1 {
			return fmt.Errorf("key %q: expiry index %d", k, i)
		}
	}
	if free != m.free || nodes != m.waitKeys {
		return fmt.Errorf("%d free entries (counted %d), %d queue nodes (%d waiting keys)", free, m.free, nodes, m.waitKeys)
	}
	return nil
}

func checkHeapsAndStalls(m *machine) error {
	for i, e := range m.expiry {
		if e.heapIdx != i || e.sess == nil || (i > 0 && expiresBefore(e, m.expiry[(i-1)/2])) {
			return fmt.Errorf("expiry heap at %d: index %d, free or out of order", i, e.heapIdx)
		}
	}
	for i, w := range m.bounds {
		if w.heapIdx != i || w.bound == 0 || m.waiters[waitKey{w.sess, w.id}] != w ||
			(i > 0 && boundLess(w, m.bounds[(i-1)/2])) {
			return fmt.Errorf("bound heap at %d wrong", i)
		}
	}
	stalled := 0
	var last *entry
	for e := m.stallHead; e != nil; e = e.snext {
		if !e.stalled || m.locks[e.key] != e || stalled > len(m.locks) {
			return fmt.Errorf("stall list: key %q not stalled or not in the table", e.key)
		}
		stalled++
		last = e
	}
	flagged := 0
	for _, e := range m.locks {
		if e.stalled {
			flagged++
		}
	}
	if stalled != m.nstalled || flagged != stalled || m.stallTail != last {
		return fmt.Errorf("%d stalled listed, %d flagged, %d counted", stalled, flagged, m.nstalled)
	}
	return nil
}
