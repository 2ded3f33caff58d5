// Stage: the in-flight table. The send loop claims a slot per request id; the receive
// loop finds the waiter of a reply by its id there.
package netmutex

import "sync/atomic"

// inflightSize bounds the requests in flight on one connection. 16384 slots cost 128 KB
// and leave room for tens of thousands of callers' worth of requests per millisecond
// without slot collisions, since a slot is freed as soon as its reply arrives.
const inflightSize = 1 << 14

// inflight maps a request id to its waiting request without locks or maps: a slot per
// low bits of the id. The request's state word holds its full id, so a late or
// duplicated reply that lands on a reused slot finds a different id and is dropped.
type inflight struct {
	slots [inflightSize]atomic.Pointer[request]
}

// claim puts r in id's slot and reports false if the slot is taken. Only the send loop
// claims, so a free slot cannot be taken under it.
func (t *inflight) claim(id uint64, r *request) bool {
	s := &t.slots[id&(inflightSize-1)]
	if s.Load() != nil {
		return false
	}
	s.Store(r)
	return true
}

// lookup returns the request in id's slot, which may belong to another id. The receive
// loop calls it.
func (t *inflight) lookup(id uint64) *request {
	return t.slots[id&(inflightSize-1)].Load()
}

// release empties id's slot if r still holds it. Any goroutine may call it.
func (t *inflight) release(id uint64, r *request) {
	t.slots[id&(inflightSize-1)].CompareAndSwap(r, nil)
}
