// Restoring the machine from appendSnapshot's bytes (the format is described in
// snapshot.go). The bytes are not trusted: every count is bounded by what the bytes
// left can hold, every reference and link is checked, and what cannot come out of a
// machine is refused, so that garbage neither panics nor allocates more than a small
// multiple of its own size, and a snapshot accepted is re-encoded to the same bytes.

package server

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/netmutex/netmutex/internal/wire"
)

// restoreMachine rebuilds a machine from appendSnapshot's bytes. cfg is the limits
// (configuration, not state): the caller passes its own. A truncated, corrupt or
// unknown-version snapshot returns errBadSnapshot, wrapped with what was wrong.
// O(size of the snapshot) time, plus the sort of the waiters by age.
func restoreMachine(cfg machineConfig, b []byte) (*machine, error) {
	if len(b) < len(snapMagic)+1 || string(b[:len(snapMagic)]) != snapMagic {
		return nil, fmt.Errorf("%w: not a machine snapshot", errBadSnapshot)
	}
	if v := b[len(snapMagic)]; v != snapVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads %d", errBadSnapshot, v, snapVersion)
	}
	d := &restorer{r: snapReader{b: b[len(snapMagic)+1:]}, m: newMachine(cfg)}
	d.restore()
	if d.r.err != nil {
		return nil, d.r.err
	}
	return d.m, nil
}

// restorer holds what restoring needs beyond the machine: entries by number, the ended
// sessions still draining, and every waiter (whose heapIdx holds its place in the bound
// heap until the heap is built) with the numbers of its keys (resolved once every entry
// is read: a waiter may wait for a key held by a later session, or free).
type restorer struct {
	r       snapReader
	m       *machine
	entries []*entry
	dead    []*session
	waiters []*waiter
	keyRefs []uint64 // the entry numbers of the waiters' keys, in the order read
}

// Minimum sizes of the records, which bound their counts by the bytes left.
const (
	minEntryBytes    = 5 // key length, a byte of key, lock id, fence, deadline
	minSessionBytes  = 10
	minWaiterBytes   = 7
	minReleasedBytes = 2
)

func (d *restorer) restore() {
	m, r := d.m, &d.r
	m.fence = r.uvarint("fence")
	m.fenceEnd = r.uvarint("fence end")
	m.grants = r.uvarint("grants")
	m.isolations = r.uvarint("isolations")
	m.ended = r.uvarint("sessions ended")
	m.wseq = r.uvarint("waiter sequence")
	m.sessPeak = r.int("session peak", math.MaxInt)
	m.locksPeak = r.int("lock peak", math.MaxInt)
	m.rebuilds = r.int("rebuilds", math.MaxInt)
	n := r.count("entries", minEntryBytes)
	expiryCap := r.int("expiry capacity", max(shrinkMin-1, 4*n+3)) // Apply shrinks a larger one
	if m.fence > m.fenceEnd {
		r.fail("fence %d past the fence limit %d", m.fence, m.fenceEnd)
	}
	d.entries = make([]*entry, 0, n)
	m.locks = make(map[string]*entry, n)
	d.readSessions()
	d.readFreeEntries()
	if r.err == nil && len(d.entries) != n {
		r.fail("%d entries, %d announced", len(d.entries), n)
	}
	d.resolveWaiters()
	d.linkQueues()
	d.readDrainQueue()
	d.readHolders()
	d.readExpiry(expiryCap)
	d.readStalls()
	if r.err == nil && len(r.b) > 0 {
		r.fail("%d bytes after the end", len(r.b))
	}
	d.checkHeaps()
	if r.err != nil {
		return
	}
	for _, e := range d.entries {
		if e.sess == nil {
			m.free++
		}
	}
	for s := m.holders; s != nil; s = s.hnext {
		m.held += s.nlocks
	}
}

// readEntry reads an entry of the lock table, held by s or free (nil), and numbers it.
func (d *restorer) readEntry(s *session) *entry {
	m, r := d.m, &d.r
	key := r.str("key", wire.MaxKey)
	e := &entry{key: key, sess: s, heapIdx: -1}
	e.lockID = r.uvarint("lock id")
	e.fence = r.uvarint("entry fence")
	e.deadline = r.varint("deadline")
	switch {
	case r.err != nil:
		return nil
	case key == "" || m.locks[key] != nil || len(d.entries) == cap(d.entries):
		r.fail("entry %q: empty, twice, or more entries than announced", key)
		return nil
	}
	d.entries = append(d.entries, e)
	m.locks[key] = e
	return e
}

// readFreeEntries reads the entries no session holds, in key order.
func (d *restorer) readFreeEntries() {
	n := d.r.count("free entries", minEntryBytes)
	prev := ""
	for i := range n {
		e := d.readEntry(nil)
		if e == nil {
			return
		}
		if i > 0 && e.key <= prev {
			d.r.fail("free entry %q out of order", e.key)
			return
		}
		prev = e.key
	}
}

// readExpiry reads the expiry heap, in heap order, into an array of the capacity it had.
func (d *restorer) readExpiry(capacity int) {
	m, r := d.m, &d.r
	n := r.count("expiry heap", 1)
	if n > capacity || (capacity >= shrinkMin && n < capacity/4) {
		r.fail("expiry heap of %d in a capacity of %d", n, capacity)
		return
	}
	m.expiry = make([]*entry, 0, capacity)
	for range n {
		e := d.entryAt(r.uvarint("expiring entry"), "expiring entry")
		if e == nil {
			return
		}
		if e.sess == nil || e.heapIdx >= 0 {
			r.fail("expiry heap: entry %q free or twice", e.key)
			return
		}
		e.heapIdx = len(m.expiry)
		m.expiry = append(m.expiry, e)
	}
}

// entryAt returns entry number i, or nil after failing.
func (d *restorer) entryAt(i uint64, what string) *entry {
	if d.r.err != nil {
		return nil
	}
	if i >= uint64(len(d.entries)) {
		d.r.fail("%s: entry %d of %d", what, i, len(d.entries))
		return nil
	}
	return d.entries[i]
}

// resolveWaiters points the waiters' queue nodes at their keys' entries.
func (d *restorer) resolveWaiters() {
	if d.r.err != nil {
		return
	}
	refs := d.keyRefs
	for _, w := range d.waiters {
		for i := range w.nodes {
			e := d.entryAt(refs[0], "waiter key")
			refs = refs[1:]
			if e == nil {
				return
			}
			for j := range i {
				if w.nodes[j].e == e {
					d.r.fail("waiter %d of session %x: key %q twice", w.id, w.sess.id, e.key)
					return
				}
			}
			w.nodes[i].w, w.nodes[i].e = w, e
		}
	}
}

// linkQueues links every waiter into the queues of its keys in seq order, which is each
// queue's order (waiters join at the tail and never move), and builds the bound heap.
func (d *restorer) linkQueues() {
	m, r := d.m, &d.r
	if r.err != nil {
		return
	}
	slices.SortFunc(d.waiters, func(a, b *waiter) int { return cmp.Compare(a.seq, b.seq) })
	bounded := 0
	for i, w := range d.waiters {
		if i > 0 && w.seq == d.waiters[i-1].seq {
			r.fail("two waiters with seq %d", w.seq)
			return
		}
		for j := range w.nodes {
			n := &w.nodes[j]
			e := n.e
			n.prev = e.qtail
			if e.qtail != nil {
				e.qtail.next = n
			} else {
				e.qhead = n
			}
			e.qtail = n
			e.nwait++
		}
		if w.heapIdx >= 0 {
			bounded++
		}
	}
	m.bounds = make([]*waiter, bounded)
	for _, w := range d.waiters {
		if i := w.heapIdx; i >= 0 {
			if i >= bounded || m.bounds[i] != nil {
				r.fail("bound position %d taken or past %d", i, bounded)
				return
			}
			m.bounds[i] = w
		}
	}
	for _, e := range d.entries {
		if e.sess != nil && e.hot != (e.nwait > 0) {
			r.fail("entry %q: hot=%v with %d waiters", e.key, e.hot, e.nwait)
			return
		}
	}
}

// readDrainQueue reads the released sessions whose entries are not all freed yet: every
// ended session read, in order, and live (isolated) ones by id.
func (d *restorer) readDrainQueue() {
	m, r := d.m, &d.r
	n := r.count("drain queue", 2)
	k := 0
	for range n {
		live := r.byte("drain liveness")
		id := r.uvarint("draining session")
		var s *session
		switch {
		case r.err != nil:
			return
		case live == 1:
			s = m.sessions[id]
		case live == 0 && k < len(d.dead) && d.dead[k].id == id:
			s = d.dead[k]
			k++
		}
		if s == nil || s.draining || s.hotHead != nil {
			r.fail("draining session %x: unknown, twice, or with waiters on its keys", id)
			return
		}
		s.draining = true
		if m.drainTail != nil {
			m.drainTail.dnext = s
		} else {
			m.drainHead = s
		}
		m.drainTail = s
	}
	if k != len(d.dead) {
		r.fail("%d ended sessions, %d of them draining", len(d.dead), k)
	}
}

// readHolders reads the list of sessions holding locks: exactly the live sessions with
// entries that are not draining.
func (d *restorer) readHolders() {
	m, r := d.m, &d.r
	n := r.count("holders", 1)
	var tail *session
	for range n {
		s := m.sessions[r.uvarint("holder")]
		if r.err != nil {
			return
		}
		if s == nil || s.draining || s.nlocks == 0 || s == m.holders || s.hprev != nil {
			r.fail("holder unknown, twice, draining or holding nothing")
			return
		}
		s.hprev = tail
		if tail != nil {
			tail.hnext = s
		} else {
			m.holders = s
		}
		tail = s
	}
	want := 0
	for s := m.lruHead; s != nil; s = s.next {
		if s.nlocks > 0 && !s.draining {
			want++
		}
	}
	if n != want {
		r.fail("%d holders listed, %d sessions hold locks", n, want)
	}
}

func (d *restorer) readStalls() {
	m, r := d.m, &d.r
	n := r.count("stalled keys", 1)
	for range n {
		e := d.entryAt(r.uvarint("stalled key"), "stalled key")
		if e == nil {
			return
		}
		if e.stalled {
			r.fail("key %q stalled twice", e.key)
			return
		}
		e.stalled = true
		if m.stallTail != nil {
			m.stallTail.snext = e
		} else {
			m.stallHead = e
		}
		m.stallTail = e
		m.nstalled++
	}
}

// checkHeaps checks that the expiry heap holds held entries only and that both heaps
// are heaps.
func (d *restorer) checkHeaps() {
	m, r := d.m, &d.r
	if r.err != nil {
		return
	}
	for i, e := range m.expiry {
		if i > 0 && expiresBefore(e, m.expiry[(i-1)/2]) {
			r.fail("expiry heap: entry %q out of heap order", e.key)
			return
		}
	}
	for i, w := range m.bounds {
		if i > 0 && boundLess(w, m.bounds[(i-1)/2]) {
			r.fail("bound heap out of order at %d", i)
			return
		}
	}
}
