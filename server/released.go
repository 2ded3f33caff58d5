// The released-id set: per session, the LOCK ids already answered for good (granted
// and released, or refused), so that a late copy of a request gets the same answer and
// never a late grant. Part of the Machine.

package server

// maxReleased bounds the released-id set of one session, so that a client whose ack
// floor is held back (a request retransmitted for seconds while thousands of others
// complete) cannot grow server memory without bound. Past it the oldest quarter is
// forgotten, without moving the floor: the pending request that holds the floor back
// must still be served. A copy of a forgotten LOCK arriving later still would be granted
// to a client that no longer waits for it; the lock then expires and isolates that
// client — a loss of liveness, never of mutual exclusion — and only after 2^18 releases
// by one session during one copy's flight.
const maxReleased = 1 << 18

// How a LOCK was answered for good. A copy gets the same answer again. A refusal for a
// cap (TOO_MANY_LOCKS, SERVER_FULL) is final like LOCKED: the client surfaces it and
// gives up the id, so a late copy must not be granted to a client that no longer waits
// for it (it would expire and isolate the client); the client asks again with a new id.
const (
	answeredReleased       uint8 = iota // granted, then released: copies get STALE
	answeredLocked                      // LOCKED
	answeredDelay                       // LOCK_DELAY
	answeredTooMany                     // TOO_MANY_LOCKS
	answeredFull                        // SERVER_FULL
	answeredTooManyWaiters              // TOO_MANY_WAITERS
)

// releasedSet is a two-level B-tree: a sorted index of leaves, each a sorted run of at
// most leafCap ids with their answers in a parallel array (9 bytes an id). A lookup is two
// binary searches; an insertion moves at most leafCap entries inside its leaf, and a
// split (one per leafCap/2 insertions at least, one per leafCap in order) moves at most
// maxReleased/leafCap*2 leaf pointers (16 KiB). Ids in order append to the last leaf;
// ids in reverse order prepend a fresh leaf rather than shifting a full one, so neither
// order costs more than the other (the sorted slice it replaces copied 2 MiB for each
// id inserted at its front). Pruning below the floor drops whole leaves and trims one.
// Empty leaves go back to the Machine's leafPool, so the steady state allocates nothing.
type releasedSet struct {
	leaves []*relLeaf // non-empty, in order: every id of leaves[i] < every id of leaves[i+1]
	n      int
}

// leafCap is the capacity of a leaf: 256 ids, 2.3 KB.
const leafCap = 256

type relLeaf struct {
	ids []uint64
	how []uint8
}

func (l *relLeaf) last() uint64 { return l.ids[len(l.ids)-1] }

// search returns the first index in l whose id is >= id.
func (l *relLeaf) search(id uint64) int {
	lo, hi := 0, len(l.ids)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if l.ids[mid] < id {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// leafPool keeps emptied leaves (with their arrays) for reuse, up to maxPooledLeaves.
type leafPool []*relLeaf

// maxPooledLeaves: 256 leaves, at most 600 KB kept for reuse.
const maxPooledLeaves = 256

func (p *leafPool) get() *relLeaf {
	if n := len(*p); n > 0 {
		l := (*p)[n-1]
		(*p)[n-1] = nil
		*p = (*p)[:n-1]
		return l
	}
	return &relLeaf{}
}

func (p *leafPool) put(l *relLeaf) {
	l.ids, l.how = l.ids[:0], l.how[:0]
	if len(*p) < maxPooledLeaves {
		*p = append(*p, l)
	}
}

// leaf returns the index of the first leaf whose last id is >= id (len(leaves) if none).
func (r *releasedSet) leaf(id uint64) int {
	lo, hi := 0, len(r.leaves)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if r.leaves[mid].last() < id {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// get reports whether id was answered for good, and how.
func (r *releasedSet) get(id uint64) (how uint8, ok bool) {
	i := r.leaf(id)
	if i == len(r.leaves) {
		return 0, false
	}
	l := r.leaves[i]
	j := l.search(id)
	if j < len(l.ids) && l.ids[j] == id {
		return l.how[j], true
	}
	return 0, false
}

// add records id answered how, unless it is there already. At maxReleased ids the
// lowest quarter is forgotten first.
func (r *releasedSet) add(id uint64, how uint8, pool *leafPool) {
	if _, ok := r.get(id); ok {
		return
	}
	if r.n >= maxReleased {
		r.dropLowest(maxReleased/4, pool)
	}
	r.n++
	i := r.leaf(id)
	if i == len(r.leaves) {
		// Past every id: the common case, ids nearly in order.
		if i > 0 && len(r.leaves[i-1].ids) < leafCap {
			l := r.leaves[i-1]
			l.ids, l.how = append(l.ids, id), append(l.how, how)
			return
		}
		r.insertLeaf(i, id, how, pool)
		return
	}
	l := r.leaves[i]
	j := l.search(id)
	if len(l.ids) == leafCap {
		switch {
		case j == 0 && (i == 0 || len(r.leaves[i-1].ids) == leafCap):
			r.insertLeaf(i, id, how, pool) // below a full leaf: a leaf of its own
			return
		case j == 0:
			p := r.leaves[i-1] // the previous leaf has room and ends below id
			p.ids, p.how = append(p.ids, id), append(p.how, how)
			return
		}
		// Split in halves; id goes into the half that covers it.
		h := leafCap / 2
		nl := pool.get()
		nl.ids, nl.how = append(nl.ids, l.ids[h:]...), append(nl.how, l.how[h:]...)
		l.ids, l.how = l.ids[:h], l.how[:h]
		r.leaves = append(r.leaves, nil)
		copy(r.leaves[i+2:], r.leaves[i+1:])
		r.leaves[i+1] = nl
		if j > h {
			l, j = nl, j-h
		}
	}
	l.ids = append(l.ids, 0)
	copy(l.ids[j+1:], l.ids[j:])
	l.ids[j] = id
	l.how = append(l.how, 0)
	copy(l.how[j+1:], l.how[j:])
	l.how[j] = how
}

// insertLeaf puts a new leaf holding only id at index i.
func (r *releasedSet) insertLeaf(i int, id uint64, how uint8, pool *leafPool) {
	nl := pool.get()
	nl.ids, nl.how = append(nl.ids, id), append(nl.how, how)
	r.leaves = append(r.leaves, nil)
	copy(r.leaves[i+1:], r.leaves[i:])
	r.leaves[i] = nl
}

// pruneBelow forgets the ids below floor: such requests are dropped anyway.
func (r *releasedSet) pruneBelow(floor uint64, pool *leafPool) {
	if len(r.leaves) == 0 || r.leaves[0].ids[0] >= floor {
		return
	}
	i := r.leaf(floor)
	r.dropLeaves(i, pool)
	if len(r.leaves) > 0 {
		l := r.leaves[0]
		r.trimLeaf(l, l.search(floor))
	}
}

// dropLowest forgets the k lowest ids.
func (r *releasedSet) dropLowest(k int, pool *leafPool) {
	i := 0
	for i < len(r.leaves) && len(r.leaves[i].ids) <= k {
		k -= len(r.leaves[i].ids)
		i++
	}
	r.dropLeaves(i, pool)
	if len(r.leaves) > 0 && k > 0 {
		r.trimLeaf(r.leaves[0], k)
	}
}

// dropLeaves forgets the first i leaves.
func (r *releasedSet) dropLeaves(i int, pool *leafPool) {
	if i == 0 {
		return
	}
	for _, l := range r.leaves[:i] {
		r.n -= len(l.ids)
		pool.put(l)
	}
	n := copy(r.leaves, r.leaves[i:])
	clear(r.leaves[n:])
	r.leaves = r.leaves[:n]
	if n == 0 && cap(r.leaves) > 4 {
		r.leaves = nil // a flood's index goes back to the collector
	}
}

// trimLeaf forgets the first k ids of l, which stays non-empty.
func (r *releasedSet) trimLeaf(l *relLeaf, k int) {
	if k == 0 {
		return
	}
	l.ids = l.ids[:copy(l.ids, l.ids[k:])]
	l.how = l.how[:copy(l.how, l.how[k:])]
	r.n -= k
}

// free returns every leaf to the pool: the session ends.
func (r *releasedSet) free(pool *leafPool) {
	r.dropLeaves(len(r.leaves), pool)
}

// Len is the number of ids in the set.
func (r *releasedSet) Len() int { return r.n }
