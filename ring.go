// Stage: the ring. Callers push their requests into it; the send loop drains it.
package netmutex

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// ring is a bounded lock-free multi-producer, single-consumer queue of requests
// (Vyukov's bounded queue): any caller pushes, only the send loop drains.
type ring struct {
	_     cpu.CacheLinePad
	head  atomic.Uint64 // next position to push; producers race on it
	_     cpu.CacheLinePad
	tail  uint64 // next position to pop; the send loop's alone
	_     cpu.CacheLinePad
	mask  uint64
	slots []ringSlot
}

// ringSlot fills a cache line, so producers on neighbouring slots do not collide.
type ringSlot struct {
	seq atomic.Uint64 // pos when free for push at pos, pos+1 when filled for pop at pos
	req *request
	_   [unsafe.Sizeof(cpu.CacheLinePad{}) - 16]byte
}

// newRing makes a ring of size slots; size must be a power of two.
func newRing(size int) *ring {
	if size <= 0 || size&(size-1) != 0 {
		panic("netmutex: ring size must be a power of two")
	}
	q := &ring{mask: uint64(size - 1), slots: make([]ringSlot, size)}
	for i := range q.slots {
		q.slots[i].seq.Store(uint64(i))
	}
	return q
}

// push adds r and reports false when the ring is full. Any goroutine may call it.
func (q *ring) push(r *request) bool {
	for {
		pos := q.head.Load()
		s := &q.slots[pos&q.mask]
		seq := s.seq.Load()
		switch diff := int64(seq) - int64(pos); {
		case diff == 0:
			if q.head.CompareAndSwap(pos, pos+1) {
				s.req = r
				s.seq.Store(pos + 1) // publishes req to the consumer
				return true
			}
		case diff < 0:
			return false
		}
	}
}

// pop removes the oldest request, or returns nil when there is none ready. Only the
// send loop calls it.
func (q *ring) pop() *request {
	s := &q.slots[q.tail&q.mask]
	if s.seq.Load() != q.tail+1 {
		return nil
	}
	r := s.req
	s.req = nil
	s.seq.Store(q.tail + q.mask + 1)
	q.tail++
	return r
}

// pending reports whether a producer has claimed a position not yet popped, even if it
// has not finished writing it. Only the send loop calls it.
func (q *ring) pending() bool { return q.head.Load() != q.tail }

// ready reports whether the oldest request can be popped. A producer between claiming
// its slot and filling it makes pending true but not ready: it checks whether the send
// loop sleeps after it fills the slot, so the loop need not wait for it. Only the send
// loop calls it.
func (q *ring) ready() bool { return q.slots[q.tail&q.mask].seq.Load() == q.tail+1 }
