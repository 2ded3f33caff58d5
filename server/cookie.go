// Address validation and the cheap defences of the receive stage: the stateless CONNECT
// cookie (as QUIC's Retry), random session ids, and the per-address CONNECT rate.

package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net/netip"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// cookieSlot is the time slot of a cookie: one is valid in its slot and the next, so for
// 30 to 60 seconds, far longer than a CONNECT's round trip and short enough that a cookie
// seen on the network is soon worthless.
const cookieSlot = int64(30 * time.Second)

// cookieJar makes and checks cookies: the first CookieSize bytes of HMAC-SHA256, under a
// secret drawn at start, of the address (IP and port), the CONNECT's nonce and the time
// slot. It keeps no state per address. Owned by the loop.
type cookieJar struct {
	mac hash.Hash
	in  []byte // scratch: the MAC's input
	sum []byte // scratch: the MAC
}

func newCookieJar() *cookieJar {
	secret := make([]byte, 32)
	rand.Read(secret) // never fails (crypto/rand, Go 1.24+)
	return &cookieJar{
		mac: hmac.New(sha256.New, secret),
		in:  make([]byte, 0, 16+2+8+8),
		sum: make([]byte, 0, sha256.Size),
	}
}

// make returns the cookie of (addr, nonce) in slot, the loop's clock divided by
// cookieSlot.
func (j *cookieJar) make(addr netip.AddrPort, nonce uint64, slot int64) (c [wire.CookieSize]byte) {
	ip := addr.Addr().Unmap().As16()
	b := append(j.in[:0], ip[:]...)
	b = binary.BigEndian.AppendUint16(b, addr.Port())
	b = binary.BigEndian.AppendUint64(b, nonce)
	b = binary.BigEndian.AppendUint64(b, uint64(slot))
	j.mac.Reset()
	j.mac.Write(b)
	j.sum = j.mac.Sum(j.sum[:0])
	copy(c[:], j.sum)
	return c
}

// valid tells whether cookie is the one of (addr, nonce) in the slot of now or the one
// before.
func (j *cookieJar) valid(cookie []byte, addr netip.AddrPort, nonce uint64, now int64) bool {
	if len(cookie) != wire.CookieSize {
		return false
	}
	slot := now / cookieSlot
	for _, s := range [2]int64{slot, slot - 1} {
		c := j.make(addr, nonce, s)
		if hmac.Equal(c[:], cookie) {
			return true
		}
	}
	return false
}

// idSource hands out random non-zero 64-bit ids from crypto/rand, drawn 64 at a time so
// that a CONNECT costs a read of the system's generator only once in 64.
type idSource struct {
	buf []byte
	off int
}

func newIDSource() *idSource { return &idSource{buf: make([]byte, 64*8), off: 64 * 8} }

func (r *idSource) next() uint64 {
	for {
		if r.off == len(r.buf) {
			rand.Read(r.buf)
			r.off = 0
		}
		v := binary.LittleEndian.Uint64(r.buf[r.off:])
		r.off += 8
		if v != 0 {
			return v
		}
	}
}

// maxRateEntries caps the addresses a rate table tracks: 65,536 entries of about 60
// bytes (the map's and the ring's) is a few MB at most. Past it, a new address is refused
// until entries age out, rather than the table growing with a flood of addresses.
const maxRateEntries = 1 << 16

// rateTable limits events per second per IP address: a token bucket per address, kept
// as its theoretical arrival time (GCRA): an event at now is allowed when tat - now is
// within burst, and then tat = max(tat, now) + interval. An address whose tat has passed
// has a full bucket: forgetting it changes nothing, so entries are aged out a few per
// batch (age), walking a ring of the tracked addresses. Owned by the loop.
type rateTable struct {
	interval int64 // nanoseconds per event at the allowed rate
	burst    int64 // how far tat may run ahead of now: a second's worth of events at once
	max      int
	tat      map[netip.Addr]int64
	ring     []netip.Addr // the addresses of tat, in a circle; allocated on first use
	head, n  int
}

func newRateTable(perSecond, entries int) *rateTable {
	interval := int64(time.Second) / int64(max(perSecond, 1))
	return &rateTable{
		interval: interval,
		burst:    int64(time.Second) - interval,
		max:      entries,
		tat:      make(map[netip.Addr]int64),
	}
}

// allow charges one event to ip at now and tells whether it is within the rate.
func (t *rateTable) allow(ip netip.Addr, now int64) bool {
	ip = ip.Unmap()
	tat, ok := t.tat[ip]
	if !ok {
		if t.n == t.max {
			t.age(now, 2)
			if t.n == t.max {
				return false // full of addresses still within their burst
			}
		}
		if t.ring == nil {
			t.ring = make([]netip.Addr, t.max)
		}
		t.ring[(t.head+t.n)%t.max] = ip
		t.n++
	}
	tat = max(tat, now)
	if tat-now > t.burst {
		t.tat[ip] = tat
		return false
	}
	t.tat[ip] = tat + t.interval
	return true
}

// age looks at up to k addresses of the ring, forgets those whose bucket is full again
// and moves the others to the back.
func (t *rateTable) age(now int64, k int) {
	for ; k > 0 && t.n > 0; k-- {
		ip := t.ring[t.head]
		t.ring[t.head] = netip.Addr{}
		t.head = (t.head + 1) % t.max
		t.n--
		if t.tat[ip] <= now {
			delete(t.tat, ip)
			continue
		}
		t.ring[(t.head+t.n)%t.max] = ip
		t.n++
	}
}

// len is how many addresses the table tracks.
func (t *rateTable) len() int { return t.n }
