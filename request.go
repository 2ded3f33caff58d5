package netmutex

import (
	"sync"
	"sync/atomic"

	"github.com/netmutex/netmutex/internal/wire"
	"github.com/valyala/bytebufferpool"
)

// framePool holds encoded request frames. A pool of its own, so that its size
// calibration learns our frame sizes and nobody else's.
var framePool bytebufferpool.Pool

// Values of request.state besides the request id it holds while in flight.
const (
	stateDone      = 0 // completed by whoever won the state word
	stateQueued    = ^uint64(0)
	stateCancelled = ^uint64(0) - 1
)

// request is one caller's pending operation: its encoded frame, the retry pacing, and
// the slot its result comes back in. Records are pooled; whoever finishes last
// recycles (see release).
type request struct {
	// state is stateQueued until the send loop gives the request its id, then that id
	// until someone completes it (the receive loop with a reply, the send loop with a
	// time-out, the caller with a cancellation) by swapping it away. Holding the full id
	// makes a reply meant for an earlier use of this record fail the swap.
	state atomic.Uint64
	refs  atomic.Int32  // the caller's and the send loop's
	done  chan struct{} // buffered 1: the completer never blocks

	frame *bytebufferpool.ByteBuffer // the frame, request id left 0 for the sender
	op    wire.Op
	key   string // for the clean-up UNLOCK of a LOCK given up on

	// Pacing, set by the caller before push.
	attempts int
	timeout  int64 // per attempt, ns
	deadline int64 // the caller's absolute deadline in nanotime, 0 = none

	// Owned by the send loop.
	id         uint64
	session    uint64 // the session it was sent in
	sent       int    // attempts made
	firstSent  int64  // nanotime of the first attempt
	attemptEnd int64

	res result // written by the completer before it signals done
}

// result is what came back for a request.
type result struct {
	op      wire.Op // reply opcode; 0 when err is set
	id      uint64  // the request id: a granted lock's identity
	session uint64  // the session the request was answered in
	fence   uint64
	code    wire.Code
	addr    string // REDIRECT target
	err     error  // a local outcome: time-out, cancellation, shutdown
}

// A record keeps the frame buffer it was born with: taking one from framePool per
// request would cost a second pool round trip for nothing.
var requestPool = sync.Pool{New: func() any {
	return &request{done: make(chan struct{}, 1), frame: framePool.Get()}
}}

// acquireRequest returns a record with two references: the caller's and the send loop's.
func acquireRequest(op wire.Op, attempts int, timeout, deadline int64) *request {
	r := requestPool.Get().(*request)
	r.op = op
	r.attempts, r.timeout, r.deadline = max(attempts, 1), timeout, deadline
	r.id, r.session, r.sent, r.firstSent, r.attemptEnd = 0, 0, 0, 0, 0
	r.res = result{}
	r.refs.Store(2)
	r.state.Store(stateQueued)
	return r
}

// release drops one reference; the last one recycles the record.
func (r *request) release() {
	if r.refs.Add(-1) != 0 {
		return
	}
	r.key = ""
	requestPool.Put(r)
}

// complete hands res to the caller if the request is still waiting as from. It reports
// whether this completer won.
func (r *request) complete(from uint64, res result) bool {
	if !r.state.CompareAndSwap(from, stateDone) {
		return false
	}
	r.res = res
	r.done <- struct{}{}
	return true
}

// cancel withdraws the request on the caller's behalf and reports whether it did; if
// not, a result is already on its way through done.
func (r *request) cancel() bool {
	for {
		s := r.state.Load()
		if s == stateDone {
			return false
		}
		if r.state.CompareAndSwap(s, stateCancelled) {
			return true
		}
	}
}

// Encoders: the frame is written with request id 0; the send loop patches in the id.

func (r *request) encodeLock(key string, ttlMs uint32) {
	r.key = key
	r.frame.B = wire.AppendLock(r.frame.B[:0], 0, ttlMs, key)
}

func (r *request) encodeUpdate(lockID uint64, key string, ttlMs uint32) {
	r.frame.B = wire.AppendUpdate(r.frame.B[:0], 0, lockID, ttlMs, key)
}

func (r *request) encodeUnlock(lockID uint64, key string) {
	r.frame.B = wire.AppendUnlock(r.frame.B[:0], 0, lockID, key)
}

func (r *request) encodeEmpty(op wire.Op) {
	r.frame.B = wire.AppendEmpty(r.frame.B[:0], op, 0)
}

// replyResult turns a decoded reply frame into a result.
func replyResult(f *wire.Frame, session uint64) result {
	res := result{op: f.Op, id: f.ID, session: session}
	switch f.Op {
	case wire.OpOK:
		res.fence = f.Fence
	case wire.OpError:
		res.code = f.Code
	case wire.OpRedirect:
		res.addr = string(f.Addr) // rare: a follower's answer
	}
	return res
}
