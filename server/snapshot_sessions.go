// Restoring the sessions of a snapshot: each with its peer, released ids, held entries
// and waiters (snapshot_restore.go restores the rest).

package server

import (
	"encoding/binary"
	"net/netip"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// readSessions reads the live sessions into the tables and the LRU list, in LRU order,
// then the ended sessions still draining.
func (d *restorer) readSessions() {
	m, r := d.m, &d.r
	live := r.count("sessions", minSessionBytes)
	dead := r.count("ended sessions", minSessionBytes)
	if live+dead > len(r.b)/minSessionBytes {
		r.fail("%d sessions in %d bytes", live+dead, len(r.b))
		return
	}
	m.sessions = make(map[uint64]*session, live)
	m.nonces = make(map[uint64]*session, live)
	d.dead = make([]*session, 0, dead)
	for i := 0; i < live+dead && r.err == nil; i++ {
		s := d.readSession(i < live)
		switch {
		case s == nil:
		case i >= live:
			d.dead = append(d.dead, s)
		case m.sessions[s.id] != nil || m.nonces[s.nonce] != nil:
			r.fail("session %x or its nonce %d twice", s.id, s.nonce)
		default:
			m.sessions[s.id], m.nonces[s.nonce] = s, s
			if s.addr.IsValid() {
				m.perAddr[s.addr]++
			}
			m.lruPush(s)
		}
	}
}

func (d *restorer) readSession(live bool) *session {
	r := &d.r
	s := &session{}
	s.id = r.uvarint("session id")
	s.nonce = r.uvarint("nonce")
	s.info = r.str("isolation info", wire.MaxIsolationInfo)
	s.lastSeen = r.varint("last seen")
	s.floor = r.uvarint("floor")
	flags := r.byte("session flags")
	s.isolated = flags&snapIsolated != 0
	s.isolating = flags&snapIsolating != 0
	if flags&^snapFlags != 0 || (s.isolating && !s.isolated) {
		r.fail("session %x: flags %#x", s.id, flags)
	}
	if flags&snapPeer != 0 {
		s.peer, s.addr = d.readPeer()
	}
	d.readReleased(&s.released)
	d.readHeld(s, false)
	d.readHeld(s, true)
	d.readWaiters(s, live)
	if r.err != nil {
		return nil
	}
	return s
}

// readPeer reads a session's far end, and the address its CONNECT counted.
func (d *restorer) readPeer() (*peerInfo, netip.Addr) {
	r := &d.r
	p := &peerInfo{}
	ip := r.addr("peer address")
	p.Addr = netip.AddrPortFrom(ip, binary.LittleEndian.Uint16(r.bytes(2, "peer port")))
	counted := r.addr("counted address")
	p.KeyID = r.byte("key id")
	switch r.byte("admin") {
	case 0:
	case 1:
		p.Admin = true
	default:
		r.fail("admin flag not 0 or 1")
	}
	copy(p.Prefix[:], r.bytes(seal.PrefixSize, "nonce prefix"))
	top := r.uvarint("window top")
	var bits [windowWords]uint64
	for i := range bits {
		bits[i] = binary.LittleEndian.Uint64(r.bytes(8, "window bitmap"))
	}
	if r.err != nil {
		return nil, netip.Addr{}
	}
	w, ok := restoreWindow(top, bits)
	if !ok {
		r.fail("replay window (%d, %x): no sequence of counters makes it", top, bits)
		return nil, netip.Addr{}
	}
	p.Window = w
	return p, counted
}

// readReleased reads a released-id set into full leaves (as ids in order fill them).
func (d *restorer) readReleased(set *releasedSet) {
	r := &d.r
	n := r.count("released ids", minReleasedBytes)
	if n > maxReleased {
		r.fail("%d released ids, more than %d", n, maxReleased)
		return
	}
	if n == 0 {
		return
	}
	leaves := make([]relLeaf, (n+leafCap-1)/leafCap)
	set.leaves = make([]*relLeaf, len(leaves))
	set.n = n
	id := uint64(0)
	for i := range leaves {
		l := &leaves[i]
		k := min(leafCap, n-i*leafCap)
		l.ids, l.how = make([]uint64, k), make([]uint8, k)
		for j := range k {
			delta := r.uvarint("released id")
			if (delta == 0 && i+j > 0) || id+delta < id {
				r.fail("released ids not increasing")
				return
			}
			id += delta
			l.ids[j], l.how[j] = id, r.byte("answer")
			if l.how[j] > answeredTooManyWaiters {
				r.fail("released id %d: answer %d", id, l.how[j])
				return
			}
		}
		set.leaves[i] = l
	}
}

// readHeld reads s's list of held entries (hot: its list of those with waiters).
func (d *restorer) readHeld(s *session, hot bool) {
	n := d.r.count("held entries", minEntryBytes)
	var prev *entry
	for range n {
		e := d.readEntry(s)
		if e == nil {
			return
		}
		e.hot, e.prev = hot, prev
		switch {
		case prev != nil:
			prev.next = e
		case hot:
			s.hotHead = e
		default:
			s.locks = e
		}
		prev = e
		s.nlocks++
	}
	if hot {
		s.hotTail = prev
	}
}

// readWaiters reads s's waiters into its list and the index; their keys are resolved
// (resolveWaiters) and their queues linked (linkQueues) once every entry is read.
func (d *restorer) readWaiters(s *session, live bool) {
	m, r := d.m, &d.r
	n := r.count("waiters", minWaiterBytes)
	if n > 0 && (!live || s.isolated) {
		r.fail("session %x: waiters of an ended or isolated session", s.id)
		return
	}
	for range n {
		w := &waiter{sess: s, heapIdx: -1}
		w.id = r.uvarint("waiter id")
		w.ttl = r.varint("waiter ttl")
		w.bound = r.varint("waiter bound")
		w.seq = r.uvarint("waiter seq")
		pos := r.uvarint("bound position")
		k := r.uvarint("waiter keys")
		switch {
		case r.err != nil:
			return
		case k < 1 || k > wire.MaxManyKeys || w.seq == 0 || w.seq > m.wseq ||
			(w.bound != 0) != (pos != 0) || pos > uint64(len(r.b)):
			r.fail("waiter %d of session %x: %d keys, seq %d, bound %d at %d", w.id, s.id, k, w.seq, w.bound, pos)
			return
		case m.waiters[waitKey{s, w.id}] != nil:
			r.fail("waiter %d of session %x twice", w.id, s.id)
			return
		}
		w.heapIdx = int(pos) - 1
		if k == 1 {
			w.nodes = w.one[:]
		} else {
			w.nodes = make([]qnode, k)
		}
		for range w.nodes {
			d.keyRefs = append(d.keyRefs, r.uvarint("waiter key"))
		}
		if r.err != nil {
			return
		}
		w.sprev = s.wtail
		if s.wtail != nil {
			s.wtail.snext = w
		} else {
			s.whead = w
		}
		s.wtail = w
		s.nwaiters++
		s.waitKeys += len(w.nodes)
		m.waitKeys += len(w.nodes)
		m.waiters[waitKey{s, w.id}] = w
		d.waiters = append(d.waiters, w)
	}
}
