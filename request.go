// Stage: the pooled request record. One caller's pending operation from the moment it
// is encoded until its result is taken: the state word that decides who completes it,
// the two references that decide who recycles it, and the channel that wakes its caller.
package netmutex

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
	"github.com/valyala/bytebufferpool"
)

var epoch = time.Now()

// nanotime is a monotonic clock that does not allocate.
func nanotime() int64 { return int64(time.Since(epoch)) }

// Values of request.state besides the request id it holds while in flight.
const (
	stateDone      = 0 // completed by whoever won the state word
	stateQueued    = ^uint64(0)
	stateCancelled = ^uint64(0) - 1
)

// request is one caller's pending operation: its encoded frame, the retry pacing, and
// the slot its result comes back in. Records are pooled per connection; whoever
// finishes last recycles (see release).
type request struct {
	// state is stateQueued until the send loop gives the request its id, then that id
	// until someone completes it (the receive loop with a reply, the send loop with a
	// time-out, the caller with a cancellation) by swapping it away. Holding the full id
	// makes a reply meant for an earlier use of this record fail the swap: ids only grow
	// on a connection, and a record never leaves the connection it was made for.
	state atomic.Uint64
	refs  atomic.Int32  // the caller's and the send loop's
	done  chan struct{} // buffered 1: the completer never blocks
	conn  *serverConn   // the connection whose pool made it; never changes

	frame *bytebufferpool.ByteBuffer // the frame, request id left 0 for the sender
	op    wire.Op
	key   string   // for the clean-up UNLOCK of a LOCK given up on
	keys  []string // the same for a LOCKMANY
	ttl   int64    // the LOCK's TTL (ns): its clean-up must land well within it
	// wait marks a LOCK or LOCKMANY that may wait in the server's queue: once the
	// server answers QUEUED (queued, set by the receive loop), the send loop parks it.
	wait   bool
	queued atomic.Bool
	// orphan marks a request no caller waits for (a clean-up UNLOCK, one reference):
	// the send loop takes its completion signal before it drops it. Dropping it as soon
	// as the state word says done would recycle the record while its completer (the
	// receive loop) still writes the result and signals done: the record's next caller
	// would get that result, or an empty one, as its own.
	orphan bool

	// Pacing, set by the caller before push.
	attempts int
	timeout  int64 // per attempt, ns
	deadline int64 // the caller's absolute deadline in nanotime, 0 = none

	// Owned by the send loop.
	id         uint64
	session    uint64 // the session it was sent in
	sent       int    // attempts made (since the last QUEUED, when parked)
	firstSent  int64  // nanotime of the first attempt
	lastSent   int64  // nanotime of the latest copy
	gen        uint32 // the socket's moves when the latest copy left (retarget.go)
	attemptEnd int64
	parked     bool // QUEUED: kept alive by slow retransmissions until granted or given up

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
	// sent is when the request was first sent (nanotime): the server acted on it no
	// earlier, so a lease it granted or renewed lasts at least until sent + ttl.
	sent int64
}

// framePool holds encoded request frames: taken when a record is acquired, returned when
// it is recycled, so that its calibration learns our frame sizes and nobody else's.
var framePool bytebufferpool.Pool

// requestPool makes the records of one connection. A pool per connection, not one per
// process: ids are counted per connection, so a record that moved between connections
// could meet a late reply carrying the id of its new use.
type requestPool struct{ pool sync.Pool }

func (p *requestPool) init(c *serverConn) {
	p.pool.New = func() any { return &request{done: make(chan struct{}, 1), conn: c} }
}

// acquire returns a record with two references: the caller's and the send loop's.
func (p *requestPool) acquire(op wire.Op, attempts int, timeout, deadline int64) *request {
	r := p.pool.Get().(*request)
	r.frame = framePool.Get()
	r.op = op
	r.attempts, r.timeout, r.deadline = max(attempts, 1), timeout, deadline
	r.id, r.session, r.sent, r.firstSent, r.lastSent, r.attemptEnd = 0, 0, 0, 0, 0, 0
	r.wait, r.parked, r.orphan = false, false, false
	r.queued.Store(false)
	r.res = result{}
	r.refs.Store(2)
	r.state.Store(stateQueued)
	return r
}

// release drops one reference; the last one recycles the record and its frame.
func (r *request) release() {
	if r.refs.Add(-1) != 0 {
		return
	}
	r.key, r.keys, r.ttl = "", nil, 0
	select {
	case <-r.done: // a completion nobody took: a clean-up request has no caller
	default:
	}
	framePool.Put(r.frame)
	r.frame = nil
	r.conn.requests.pool.Put(r)
}

// complete hands res to the caller if the request is still waiting as from. It reports
// whether this completer won.
func (r *request) complete(from uint64, res result) bool {
	if !r.win(from) {
		return false
	}
	r.signal(res)
	return true
}

// win takes the state word if the request still waits as from. The winner owns the
// record until it signals: neither its caller nor, for an orphan, the send loop lets go
// of it before, so it is not recycled meanwhile.
func (r *request) win(from uint64) bool { return r.state.CompareAndSwap(from, stateDone) }

// signal hands res to whoever waits for the request; only the winner calls it, once.
func (r *request) signal(res result) {
	r.res = res
	r.done <- struct{}{}
}

// takeCompletion takes the completion signal of an orphan the state word says is done,
// and reports false while its completer has yet to send it.
func (r *request) takeCompletion() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// cancel withdraws the request on the caller's behalf and reports whether it did; if
// not, a result is already on its way through done. It also returns the request id the
// request had been sent with, 0 if it never left.
func (r *request) cancel() (id uint64, ok bool) {
	for {
		s := r.state.Load()
		if s == stateDone {
			return 0, false
		}
		if r.state.CompareAndSwap(s, stateCancelled) {
			if s == stateQueued || s == stateCancelled {
				s = 0
			}
			return s, true
		}
	}
}

// finish takes the result and drops the caller's reference. Only the caller calls it,
// once it has the result (from done, or by a cancel it won).
func (r *request) finish() result {
	res := r.res
	r.release()
	return res
}

// failLocal completes r with a local outcome unless someone else already did; err nil
// means "session lost", which the caller treats as DISCONNECTED.
func (r *request) failLocal(err error) bool {
	from := r.state.Load()
	if from == stateDone || from == stateCancelled {
		return false
	}
	res := result{err: err, id: r.id, session: r.session} // the id: the caller may owe it an UNLOCK
	if err == nil {
		res = result{op: wire.OpDisconnected, session: r.session}
	}
	return r.complete(from, res)
}
