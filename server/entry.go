// Log entries: what a cluster leader's loop puts in the Raft log, and how every node
// reads it back. One entry is what one loop iteration collected (the datagrams that
// authenticated and bound, the isolation runs that ended) with the leader's time, so
// a batch of requests shares one replication as it shares one system call.

package server

import (
	"encoding/binary"
	"errors"
	"math"
	"net/netip"

	"github.com/netmutex/netmutex/internal/seal"
)

// Entry kinds.
const (
	entryBatch  = 1 // datagrams and ended isolation runs, applied in one Apply
	entryLeader = 2 // a new leader's first entry: it raises the fence floor
)

// Datagram flags in an entry.
const (
	dgConnect = 1 << 0 // a CONNECT: NewSession follows
	dgAdmin   = 1 << 1 // the sender may send UNLOCKALL
	dgSealed  = 1 << 2 // it arrived sealed: key id, nonce prefix and counter follow
	dgIPv4    = 1 << 3 // the sender's IP is 4 bytes, not 16 (kept as it came, so that
	// it compares equal to the addresses of later datagrams)
)

// entryHeaderSize: kind, origin, now, and for a batch the two counts.
const entryHeaderSize = 1 + 8 + 8

// errBadEntry: a log entry this version cannot read. Entries come from the log, written
// by a leader of the cluster: one that does not parse is a bug or a newer version.
var errBadEntry = errors.New("server: bad log entry")

// maxEntryBytes bounds one entry's datagrams: while the log is behind, the leader's
// batches gather into the next entry up to this, and later datagrams are dropped (their
// clients retransmit). 1 MiB is hundreds of full datagrams: one AppendEntries.
const maxEntryBytes = 1 << 20

// entryWriter gathers the next batch entry: each datagram that passed its checks, and
// the isolation runs that ended. take builds the entry in a buffer of its own (the log
// keeps it) and starts over; the writer's own buffer is reused.
type entryWriter struct {
	dgs  []byte   // the datagrams' records
	n    int      // datagrams in dgs
	isos []uint64 // sessions whose isolation run ended
}

// isolationDone records that the isolation run of session ended.
func (w *entryWriter) isolationDone(session uint64) { w.isos = append(w.isos, session) }

// datagram records one datagram of requests (plain: opened, checked by wire.Parse); false
// when the entry is full and the datagram was not recorded.
func (w *entryWriter) datagram(from netip.AddrPort, key *seal.Key, nonce seal.Nonce, admin bool, newSession uint64, connect bool, plain []byte) bool {
	if len(w.dgs)+len(plain) > maxEntryBytes || w.n == math.MaxUint16 {
		return false
	}
	var flags byte
	if connect {
		flags |= dgConnect
	}
	if admin {
		flags |= dgAdmin
	}
	if key != nil {
		flags |= dgSealed
	}
	if from.Addr().Is4() {
		flags |= dgIPv4
	}
	b := append(w.dgs, flags)
	if from.Addr().Is4() {
		ip := from.Addr().As4()
		b = append(b, ip[:]...)
	} else {
		ip := from.Addr().As16()
		b = append(b, ip[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, from.Port())
	if key != nil {
		b = append(b, key.ID)
		b = append(b, nonce.Prefix[:]...)
		b = binary.BigEndian.AppendUint64(b, nonce.Counter)
	}
	if connect {
		b = binary.BigEndian.AppendUint64(b, newSession)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(plain)))
	w.dgs = append(b, plain...)
	w.n++
	return true
}

// empty tells that nothing was recorded since the last take.
func (w *entryWriter) empty() bool { return w.n == 0 && len(w.isos) == 0 }

// take returns the entry, stamped with now (the latest time of the datagrams it holds,
// so that no lease it grants starts before its request was received), and starts over.
func (w *entryWriter) take(origin uint64, now int64) []byte {
	isos := w.isos[:min(len(w.isos), math.MaxUint16)]
	b := make([]byte, 0, entryHeaderSize+2+8*len(isos)+2+len(w.dgs))
	b = append(b, entryBatch)
	b = binary.BigEndian.AppendUint64(b, origin)
	b = binary.BigEndian.AppendUint64(b, uint64(now))
	b = binary.BigEndian.AppendUint16(b, uint16(len(isos)))
	for _, sid := range isos {
		b = binary.BigEndian.AppendUint64(b, sid)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(w.n))
	b = append(b, w.dgs...)
	w.isos = append(w.isos[:0], w.isos[len(isos):]...)
	w.dgs, w.n = w.dgs[:0], 0
	return b
}

// reset forgets what was recorded (leadership lost: its requests are retransmitted).
func (w *entryWriter) reset() {
	w.dgs, w.n, w.isos = w.dgs[:0], 0, w.isos[:0]
}

// leaderEntry is a new leader's first entry: no fence below floor is handed out after
// it (the leader's wall clock in nanoseconds, so fences rise even if every node lost
// its log).
func leaderEntry(origin uint64, now int64, floor uint64) []byte {
	b := make([]byte, 0, entryHeaderSize+8)
	b = append(b, entryLeader)
	b = binary.BigEndian.AppendUint64(b, origin)
	b = binary.BigEndian.AppendUint64(b, uint64(now))
	return binary.BigEndian.AppendUint64(b, floor)
}

// entryReader reads an entry back.
type entryReader struct {
	kind   byte
	origin uint64
	now    int64
	floor  uint64   // entryLeader
	isos   []uint64 // entryBatch: sessions whose isolation run ended
	rest   []byte   // the datagrams
	n      int      // datagrams left
}

// entryDatagram is one datagram of a batch entry.
type entryDatagram struct {
	flags      byte
	from       netip.AddrPort
	keyID      uint8
	nonce      seal.Nonce
	newSession uint64
	plain      []byte // aliases the entry
}

func (r *entryReader) read(b []byte) error {
	if len(b) < entryHeaderSize {
		return errBadEntry
	}
	r.kind = b[0]
	r.origin = binary.BigEndian.Uint64(b[1:])
	r.now = int64(binary.BigEndian.Uint64(b[9:]))
	b = b[entryHeaderSize:]
	r.isos = r.isos[:0]
	switch r.kind {
	case entryLeader:
		if len(b) != 8 {
			return errBadEntry
		}
		r.floor = binary.BigEndian.Uint64(b)
		r.rest, r.n = nil, 0
		return nil
	case entryBatch:
	default:
		return errBadEntry
	}
	if len(b) < 2 {
		return errBadEntry
	}
	nIso := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < nIso*8+2 {
		return errBadEntry
	}
	for i := 0; i < nIso; i++ {
		r.isos = append(r.isos, binary.BigEndian.Uint64(b[i*8:]))
	}
	b = b[nIso*8:]
	r.n = int(binary.BigEndian.Uint16(b))
	r.rest = b[2:]
	return nil
}

// next reads the next datagram into d; false at the end or on a torn entry.
func (r *entryReader) next(d *entryDatagram) (bool, error) {
	if r.n == 0 {
		if len(r.rest) != 0 {
			return false, errBadEntry
		}
		return false, nil
	}
	b := r.rest
	if len(b) < 1+4+2 {
		return false, errBadEntry
	}
	d.flags = b[0]
	b = b[1:]
	var ip netip.Addr
	if d.flags&dgIPv4 != 0 {
		ip = netip.AddrFrom4([4]byte(b[:4]))
		b = b[4:]
	} else {
		if len(b) < 16+2 {
			return false, errBadEntry
		}
		ip = netip.AddrFrom16([16]byte(b[:16]))
		b = b[16:]
	}
	d.from = netip.AddrPortFrom(ip, binary.BigEndian.Uint16(b))
	b = b[2:]
	d.keyID, d.nonce = 0, seal.Nonce{}
	if d.flags&dgSealed != 0 {
		if len(b) < 1+seal.PrefixSize+8 {
			return false, errBadEntry
		}
		d.keyID = b[0]
		copy(d.nonce.Prefix[:], b[1:])
		d.nonce.Counter = binary.BigEndian.Uint64(b[1+seal.PrefixSize:])
		b = b[1+seal.PrefixSize+8:]
	}
	d.newSession = 0
	if d.flags&dgConnect != 0 {
		if len(b) < 8 {
			return false, errBadEntry
		}
		d.newSession = binary.BigEndian.Uint64(b)
		b = b[8:]
	}
	if len(b) < 2 {
		return false, errBadEntry
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return false, errBadEntry
	}
	d.plain = b[2 : 2+n]
	r.rest = b[2+n:]
	r.n--
	return true, nil
}
