// Snapshots of the machine, so that a replicated log can be compacted: appendSnapshot
// writes the whole state, restoreMachine (snapshot_restore.go) rebuilds it. Part of the
// Machine; only its owner may call them, between Applies.
//
// The format (version 1), every integer a minimal uvarint (signed ones zig-zag) unless
// said otherwise, every count and string length-prefixed:
//
//	"NMSM" 1
//	fence fenceEnd grants isolations ended wseq sessPeak locksPeak rebuilds
//	entries cap(expiry)
//	live sessions (LRU order, oldest first), then the ended ones still draining (drain order):
//	  id nonce info lastSeen± floor flags [peer] released cold hot waiters
//	  peer:      addr port(u16 LE) counted keyID admin prefix[16] window top, 4 × u64 LE bitmap
//	             (addr, port: where it is now, for the network stage; counted: the IP its
//	             CONNECT came from, counted against MaxSessionsPerAddr; addresses in
//	             netip's binary form, length-prefixed)
//	  released:  n, then n × (id - previous id, how u8), ids increasing
//	  cold, hot: n, then n entries (key lockID fence deadline±), head first
//	  waiters:   n, then n × (id ttl± bound± seq boundPos nkeys, nkeys entry numbers),
//	             oldest first; boundPos 0: no bound, else its index in the bound heap + 1
//	free entries: n, then n entries, by key
//	drain queue: n × (live u8, session id)
//	holders:     n × session id, head first
//	expiry heap: n × entry number, in heap order
//	stall list:  n × entry number, head first
//
// Entries are numbered in the order they are written: the held ones in their sessions'
// lists, then the free ones. Only the free ones are sorted, so a snapshot costs no sort
// of the whole table. What is derived rather than written: each key's queue (its
// waiters in seq order: they join at the tail and never move), entry.sess and hot (from
// the lists), the counts, the session tables (sessions, nonces, perAddr), the heaps'
// indexes. The released sets are written as their contents: their leaf layout is no
// state. Scratch that is empty between Applies (pushed, handQ, due, effects) is not.

package server

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strings"

	"github.com/netmutex/netmutex/internal/seal"
)

// errBadSnapshot is returned by restoreMachine for a snapshot that is truncated,
// corrupt, inconsistent or of an unknown version, wrapped with what was wrong.
// Unexported like the machine: only the cluster's FSM restores one.
var errBadSnapshot = errors.New("server: bad snapshot")

const (
	snapMagic   = "NMSM"
	snapVersion = 1
)

// Session flags.
const (
	snapIsolated = 1 << iota
	snapIsolating
	snapPeer
	snapFlags = snapIsolated | snapIsolating | snapPeer
)

const windowWords = seal.WindowSize / 64

// appendSnapshot appends a deterministic encoding of the machine's whole state to b: the
// same state always gives the same bytes (free entries written in key order). O(state)
// time plus the sort of the free entries; it allocates only their index and b's growth.
//
// It borrows entry.heapIdx to number the entries while it writes, and restores it.
func (m *machine) appendSnapshot(b []byte) []byte {
	b = slices.Grow(b, 64+40*len(m.locks)+96*len(m.sessions))
	b = append(b, snapMagic...)
	b = append(b, snapVersion)
	for _, v := range [...]uint64{m.fence, m.fenceEnd, m.grants, m.isolations, m.ended, m.wseq,
		uint64(m.sessPeak), uint64(m.locksPeak), uint64(m.rebuilds), uint64(len(m.locks)), uint64(cap(m.expiry))} {
		b = binary.AppendUvarint(b, v)
	}

	free := m.numberEntries()
	defer m.unnumberEntries(free)
	dead := 0
	for s := m.drainHead; s != nil; s = s.dnext {
		if m.sessions[s.id] != s {
			dead++
		}
	}
	b = binary.AppendUvarint(b, uint64(len(m.sessions)))
	b = binary.AppendUvarint(b, uint64(dead))
	for s := m.lruHead; s != nil; s = s.next {
		b = appendSession(b, s)
	}
	for s := m.drainHead; s != nil; s = s.dnext {
		if m.sessions[s.id] != s {
			b = appendSession(b, s)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(free)))
	for _, e := range free {
		b = appendEntry(b, e)
	}

	n := 0
	for s := m.drainHead; s != nil; s = s.dnext {
		n++
	}
	b = binary.AppendUvarint(b, uint64(n))
	for s := m.drainHead; s != nil; s = s.dnext {
		live := byte(0)
		if m.sessions[s.id] == s {
			live = 1
		}
		b = append(b, live)
		b = binary.AppendUvarint(b, s.id)
	}
	n = 0
	for s := m.holders; s != nil; s = s.hnext {
		n++
	}
	b = binary.AppendUvarint(b, uint64(n))
	for s := m.holders; s != nil; s = s.hnext {
		b = binary.AppendUvarint(b, s.id)
	}
	b = binary.AppendUvarint(b, uint64(len(m.expiry)))
	for _, e := range m.expiry {
		b = binary.AppendUvarint(b, uint64(e.heapIdx))
	}
	b = binary.AppendUvarint(b, uint64(m.nstalled))
	for e := m.stallHead; e != nil; e = e.snext {
		b = binary.AppendUvarint(b, uint64(e.heapIdx))
	}
	return b
}

// numberEntries numbers the entries in heapIdx in the order appendSnapshot writes them,
// and returns the free ones in key order. Every held entry is on a list of a live or
// draining session.
func (m *machine) numberEntries() []*entry {
	k := 0
	number := func(s *session) {
		for _, head := range [2]*entry{s.locks, s.hotHead} {
			for e := head; e != nil; e = e.next {
				e.heapIdx = k
				k++
			}
		}
	}
	for s := m.lruHead; s != nil; s = s.next {
		number(s)
	}
	for s := m.drainHead; s != nil; s = s.dnext {
		if m.sessions[s.id] != s {
			number(s)
		}
	}
	var free []*entry
	if m.free > 0 {
		free = make([]*entry, 0, m.free)
		for _, e := range m.locks {
			if e.sess == nil {
				free = append(free, e)
			}
		}
		slices.SortFunc(free, func(x, y *entry) int { return strings.Compare(x.key, y.key) })
	}
	for _, e := range free {
		e.heapIdx = k
		k++
	}
	return free
}

// unnumberEntries gives heapIdx back its meaning: the index in the expiry heap, or -1.
func (m *machine) unnumberEntries(free []*entry) {
	unnumber := func(s *session) {
		for _, head := range [2]*entry{s.locks, s.hotHead} {
			for e := head; e != nil; e = e.next {
				e.heapIdx = -1
			}
		}
	}
	for s := m.lruHead; s != nil; s = s.next {
		unnumber(s)
	}
	for s := m.drainHead; s != nil; s = s.dnext {
		unnumber(s)
	}
	for _, e := range free {
		e.heapIdx = -1
	}
	for i, e := range m.expiry {
		e.heapIdx = i
	}
}

func appendEntry(b []byte, e *entry) []byte {
	b = appendString(b, e.key)
	b = binary.AppendUvarint(b, e.lockID)
	b = binary.AppendUvarint(b, e.fence)
	return binary.AppendVarint(b, e.deadline)
}

// appendSession appends s. Its waiters name their keys by entry number (numberEntries).
func appendSession(b []byte, s *session) []byte {
	b = binary.AppendUvarint(b, s.id)
	b = binary.AppendUvarint(b, s.nonce)
	b = appendString(b, s.info)
	b = binary.AppendVarint(b, s.lastSeen)
	b = binary.AppendUvarint(b, s.floor)
	var flags byte
	if s.isolated {
		flags |= snapIsolated
	}
	if s.isolating {
		flags |= snapIsolating
	}
	if s.peer != nil {
		flags |= snapPeer
	}
	b = append(b, flags)
	if p := s.peer; p != nil {
		b = appendAddr(b, p.Addr.Addr())
		b = binary.LittleEndian.AppendUint16(b, p.Addr.Port())
		b = appendAddr(b, s.addr)
		b = append(b, p.KeyID, boolByte(p.Admin))
		b = append(b, p.Prefix[:]...)
		top, bits := windowState(&p.Window)
		b = binary.AppendUvarint(b, top)
		for _, w := range bits {
			b = binary.LittleEndian.AppendUint64(b, w)
		}
	}

	b = binary.AppendUvarint(b, uint64(s.released.n))
	prev := uint64(0)
	for _, l := range s.released.leaves {
		for i, id := range l.ids {
			b = binary.AppendUvarint(b, id-prev)
			b = append(b, l.how[i])
			prev = id
		}
	}

	b = appendEntryList(b, s.locks)
	b = appendEntryList(b, s.hotHead)
	b = binary.AppendUvarint(b, uint64(s.nwaiters))
	for w := s.whead; w != nil; w = w.snext {
		b = binary.AppendUvarint(b, w.id)
		b = binary.AppendVarint(b, w.ttl)
		b = binary.AppendVarint(b, w.bound)
		b = binary.AppendUvarint(b, w.seq)
		b = binary.AppendUvarint(b, uint64(w.heapIdx+1))
		b = binary.AppendUvarint(b, uint64(len(w.nodes)))
		for i := range w.nodes {
			b = binary.AppendUvarint(b, uint64(w.nodes[i].e.heapIdx))
		}
	}
	return b
}

// appendEntryList appends the count and the entries linked from head.
func appendEntryList(b []byte, head *entry) []byte {
	n := 0
	for e := head; e != nil; e = e.next {
		n++
	}
	b = binary.AppendUvarint(b, uint64(n))
	for e := head; e != nil; e = e.next {
		b = appendEntry(b, e)
	}
	return b
}

// appendAddr appends a's binary form (netip's), length-prefixed. The length is written
// ahead and fixed after: at most 16 bytes and a zone, so one byte unless the zone is long.
func appendAddr(b []byte, a netip.Addr) []byte {
	n := len(b)
	b, _ = a.AppendBinary(append(b, 0)) // never fails
	if l := len(b) - n - 1; l < 0x80 {
		b[n] = byte(l)
	} else {
		b = append(b[:n], appendString(nil, string(b[n+1:]))...)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// windowState reads a replay window's newest counter and bitmap.
func windowState(w *seal.Window) (top uint64, bits [windowWords]uint64) { return w.State() }

// restoreWindow rebuilds the window whose state is (top, bits) by accepting, in
// increasing order, each counter whose bit is set: a bit i stands for the one counter
// of (top-WindowSize, top] that is i modulo WindowSize. The result is read back and
// must be (top, bits) exactly: a bitmap no sequence of Accepts makes is refused.
func restoreWindow(top uint64, bits [windowWords]uint64) (seal.Window, bool) {
	var w seal.Window
	for d := uint64(seal.WindowSize - 1); ; d-- {
		if c := top - d; d < top && bits[c/64%windowWords]&(1<<(c%64)) != 0 {
			w.Accept(c)
		}
		if d == 0 {
			break
		}
	}
	gotTop, gotBits := windowState(&w)
	return w, gotTop == top && gotBits == bits
}
