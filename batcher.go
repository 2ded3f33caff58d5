package netmutex

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/wire"
)

// Pacing of the send loop.
const (
	// ringSize equals the in-flight table, so a push fails only when that many callers
	// are already waiting on one connection.
	ringSize = inflightSize
	// scanInterval is how often the send loop walks its requests for retransmission
	// deadlines: one walk per connection instead of a timer per request. It bounds how
	// late a retransmission can be.
	scanInterval = int64(time.Millisecond)
	// busyPause is how long the sender lets a batch grow after the server said BUSY:
	// fewer, fuller datagrams are what a server that is behind needs.
	busyPause = 200 * time.Microsecond
	// connRetryMin is the first wait before a CONNECT is sent again.
	connRetryMin = int64(50 * time.Millisecond)
)

var epoch = time.Now()

// nanotime is a monotonic clock that does not allocate.
func nanotime() int64 { return int64(time.Since(epoch)) }

// serverInfo is what a CONNECTED reply told about the server.
type serverInfo struct {
	maxTTL           time.Duration
	sessionTimeout   time.Duration
	retransmitWindow time.Duration
	servers          []wire.Server
}

// serverConn is one UDP socket to one server with its two loops: sendLoop drains the
// ring into datagrams, recvLoop hands replies to their waiters.
type serverConn struct {
	addr  string
	sock  *net.UDPConn
	bc    batchio.Conn
	ring  *ring
	table inflight
	info  string // IsolationInfo sent with CONNECT

	session   atomic.Uint64 // 0 while there is none: the sender then connects
	isolated  atomic.Bool
	leaving   atomic.Bool // a DISCONNECT is under way: do not connect again
	server    atomic.Pointer[serverInfo]
	redirect  atomic.Pointer[string] // set when a CONNECT was answered with REDIRECT
	connected chan struct{}          // buffered 1: signalled on CONNECTED or REDIRECT
	connNonce atomic.Uint64
	connWait  atomic.Int64 // ns between CONNECT attempts

	sleeping atomic.Bool
	wake     chan struct{}
	closing  atomic.Bool
	stopped  atomic.Bool
	busy     atomic.Bool
	wg       sync.WaitGroup

	stats connStats

	// unbatched sends every frame in a datagram and a system call of its own: the
	// baseline that benchmarks compare batching against. Set before the loops start.
	unbatched bool

	// Owned by the send loop.
	list          []*request // every request the sender holds a reference to
	nextID        uint64
	floor         uint64
	lastScan      int64
	lastSend      int64
	connSent      int64 // when the last CONNECT left, 0 = none in flight
	connBackoff   int64 // wait before the next CONNECT
	cleanups      []cleanup
	out           []batchio.Message
	outBufs       [][]byte
	dgStart       int
	pendingFrames uint64 // frames packed since the last write
	dgSession     uint64

	// Owned by the receive loop.
	in []batchio.Message
}

// cleanup is an UNLOCK owed for a LOCK given up on after it was sent: it may have been
// granted, and an orphaned lock would expire and isolate the session.
type cleanup struct {
	lockID uint64
	key    string
}

// connStats are counters for the benchmark and tests. The send loop's and the receive
// loop's live on separate cache lines, so the two loops do not bounce one line between
// cores.
type connStats struct {
	framesOut, datagramsOut, sendCalls, retransmits atomic.Uint64
	_                                               [32]byte
	framesIn, datagramsIn, recvCalls, badIn, busy   atomic.Uint64
	_                                               [24]byte
}

// dialServer opens a socket to addr and starts its loops, which connect at once.
// notify is signalled when a CONNECT is answered.
func dialServer(addr, info string, connectWait time.Duration, notify chan struct{}, unbatched bool) (*serverConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	sock, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		return nil, err
	}
	batchio.SetBuffers(sock)
	bc, err := batchio.New(sock)
	if err != nil {
		sock.Close()
		return nil, err
	}
	c := &serverConn{
		addr:      addr,
		sock:      sock,
		bc:        bc,
		ring:      newRing(ringSize),
		info:      info,
		connected: notify,
		wake:      make(chan struct{}, 1),
		list:      make([]*request, 0, inflightSize),
		nextID:    1,
		floor:     1,
		out:       make([]batchio.Message, batchio.MaxBatch),
		outBufs:   make([][]byte, batchio.MaxBatch),
		in:        make([]batchio.Message, batchio.MaxBatch),
		unbatched: unbatched,
	}
	for i := range c.outBufs {
		c.outBufs[i] = make([]byte, 0, wire.MaxDatagram)
	}
	for i := range c.in {
		// Room for a datagram larger than we ever expect, so an oversized one is seen
		// whole and rejected by its length check rather than truncated.
		c.in[i].Buf = make([]byte, 2048)
	}
	c.connWait.Store(int64(connectWait))
	c.wg.Add(2)
	go c.sendLoop()
	go c.recvLoop()
	return c, nil
}

// close stops both loops and closes the socket; waiting requests get ErrDisconnected.
func (c *serverConn) close() {
	if c.closing.Swap(true) {
		c.wg.Wait()
		return
	}
	c.wakeSender()
	c.sock.Close()
	c.wg.Wait()
}

func (c *serverConn) wakeSender() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// roundTrip sends r and waits for its result; ctx, if not nil, can cancel the wait.
func (c *serverConn) roundTrip(r *request, ctx context.Context) result {
	for !c.ring.push(r) {
		if c.stopped.Load() {
			break
		}
		runtime.Gosched() // a full ring: wait for the sender, never drop
	}
	if c.sleeping.Load() && c.sleeping.CompareAndSwap(true, false) {
		c.wakeSender()
	}
	if c.stopped.Load() && r.cancel() {
		// The sender may have gone before it saw r; nobody else will answer.
		r.res = result{err: ErrDisconnected}
		return r.finish()
	}
	if ctx == nil {
		<-r.done
		return r.finish()
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		if r.cancel() {
			r.res = result{err: ctx.Err()}
			return r.finish()
		}
		<-r.done
	}
	return r.finish()
}

// finish takes the result and drops the caller's reference.
func (r *request) finish() result {
	res := r.res
	r.release()
	return res
}

// sendLoop is the only goroutine that assigns request ids, claims in-flight slots,
// retransmits and writes to the socket.
func (c *serverConn) sendLoop() {
	defer c.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for !c.closing.Load() {
		now := nanotime()
		session := c.session.Load()
		c.beginBatch(session)
		took := false
		for len(c.list) < cap(c.list) {
			r := c.ring.pop()
			if r == nil {
				break
			}
			took = true
			r.attemptEnd = now + r.timeout
			c.list = append(c.list, r)
			if session != 0 {
				c.send(r, now, session)
			}
		}
		if now-c.lastScan >= scanInterval {
			c.scan(now, session)
		}
		c.sendCleanups(session)
		if session != 0 {
			c.connSent = 0
		}
		if session == 0 && c.redirect.Load() != nil {
			c.redirectParked()
		} else if session == 0 && !c.isolated.Load() && !c.leaving.Load() {
			c.maybeConnect(now)
		} else if session != 0 && c.touchDue(now) {
			b := c.reserve(session, wire.FrameHeaderSize)
			*b = wire.AppendEmpty(*b, wire.OpTouch, c.takeID())
		}
		sent := c.flush(now)
		if c.busy.Load() && sent {
			time.Sleep(busyPause)
			c.busy.Store(false)
		}
		if took || sent || c.ring.pending() {
			// Let the batch form: callers woken by the last replies are runnable now
			// and about to push. Yielding lets them run first; with nothing else to
			// run it returns at once, so a lone request still leaves without delay.
			c.gather()
			continue
		}
		c.sleeping.Store(true)
		if c.ring.pending() || c.closing.Load() {
			c.sleeping.Store(false)
			continue
		}
		timer.Reset(c.idleWait(now))
		select {
		case <-c.wake:
		case <-timer.C:
		}
		c.sleeping.Store(false)
		c.gather() // as above: whoever woke us may have company
	}
	c.shutdown()
}

// gatherYields bounds how often the sender yields while requests keep arriving.
const gatherYields = 4

// gather yields the processor while callers keep pushing, so that the next datagram
// carries what they pushed. No timer is involved: when nobody else is runnable, Gosched
// returns at once.
func (c *serverConn) gather() {
	for i := 0; i < gatherYields; i++ {
		before := c.ring.head.Load()
		runtime.Gosched()
		if c.ring.head.Load() == before {
			return
		}
	}
}

// shutdown answers every request the sender holds or could still receive.
func (c *serverConn) shutdown() {
	c.stopped.Store(true)
	for _, r := range c.list {
		c.fail(r, ErrDisconnected)
		c.drop(r)
	}
	c.list = c.list[:0]
	for c.ring.pending() {
		if r := c.ring.pop(); r != nil {
			c.fail(r, ErrDisconnected)
			r.release()
		} else {
			runtime.Gosched() // a producer is between claiming and filling its slot
		}
	}
}

// idleWait is how long the sender may sleep with nothing to send.
func (c *serverConn) idleWait(now int64) time.Duration {
	if len(c.list) > 0 {
		return time.Duration(scanInterval)
	}
	if c.session.Load() == 0 {
		return time.Duration(max(c.connBackoff, connRetryMin))
	}
	if si := c.server.Load(); si != nil {
		return max(time.Duration(c.lastSend+int64(si.sessionTimeout/3)-now), time.Millisecond)
	}
	return time.Second
}

func (c *serverConn) touchDue(now int64) bool {
	si := c.server.Load()
	return si != nil && now-c.lastSend >= int64(si.sessionTimeout/3)
}

// takeID hands out the next request id; only the sender calls it.
func (c *serverConn) takeID() uint64 {
	id := c.nextID
	c.nextID++
	return id
}

// send puts r's frame in the batch, giving it an id and a slot on its first attempt.
func (c *serverConn) send(r *request, now int64, session uint64) {
	if r.id == 0 {
		id := c.takeID()
		for !c.table.claim(id, r) {
			id = c.takeID() // a slow request still holds this slot: skip the id
		}
		if !r.state.CompareAndSwap(stateQueued, id) {
			c.table.release(id, r) // cancelled before it left
			return
		}
		r.id, r.session, r.firstSent = id, session, now
	} else {
		c.stats.retransmits.Add(1)
	}
	r.sent++
	r.attemptEnd = now + r.timeout
	b := c.reserve(session, len(r.frame.B))
	start := len(*b)
	*b = append(*b, r.frame.B...)
	wire.PutFrameID((*b)[start:], r.id)
}

// scan walks every held request once: drops finished ones, sends parked ones once a
// session exists, retransmits or fails those whose attempt ran out, and computes the
// ack floor.
func (c *serverConn) scan(now int64, session uint64) {
	c.lastScan = now
	floor := c.nextID
	kept := c.list[:0]
	for _, r := range c.list {
		st := r.state.Load()
		switch {
		case st == stateDone || st == stateCancelled:
			if st == stateCancelled && r.op == wire.OpLock && r.id != 0 {
				c.cleanups = append(c.cleanups, cleanup{lockID: r.id, key: r.key})
			}
			c.drop(r)
			continue
		case r.deadline != 0 && now >= r.deadline:
			c.giveUp(r, errDeadline)
			c.drop(r)
			continue
		case r.id != 0 && session != 0 && session != r.session:
			c.fail(r, nil) // its session is gone: the caller decides
			c.drop(r)
			continue
		case now >= r.attemptEnd:
			if r.id == 0 {
				r.sent++ // an attempt spent waiting for a session
			}
			if r.sent >= r.attempts {
				c.giveUp(r, ErrTooMuchRetries)
				c.drop(r)
				continue
			}
			if r.id != 0 && session != 0 && c.pastWindow(r, now) {
				// The server keeps what it needs to recognise a copy for a bounded
				// time only; a later retransmission could be taken for a new request.
				c.giveUp(r, ErrTooMuchRetries)
				c.drop(r)
				continue
			}
			if r.id != 0 && session != 0 {
				c.send(r, now, session)
			} else {
				if r.id != 0 {
					r.sent++ // an attempt spent waiting for the session to return
				}
				r.attemptEnd = now + r.timeout
			}
		case r.id == 0 && session != 0:
			c.send(r, now, session)
		}
		if r.id != 0 && r.id < floor {
			floor = r.id
		}
		kept = append(kept, r)
	}
	clear(c.list[len(kept):])
	c.list = kept
	c.floor = max(c.floor, floor)
}

// redirectParked answers the requests waiting for a session with the REDIRECT that
// the server gave instead of one: the caller moves to the server it names.
func (c *serverConn) redirectParked() {
	p := c.redirect.Load()
	for _, r := range c.list {
		if r.id == 0 {
			r.complete(stateQueued, result{op: wire.OpRedirect, addr: *p})
		}
	}
}

// pastWindow reports whether r was first sent longer ago than the server's retransmit
// window, after which the protocol forbids sending it again.
func (c *serverConn) pastWindow(r *request, now int64) bool {
	si := c.server.Load()
	return si != nil && si.retransmitWindow > 0 && now-r.firstSent >= int64(si.retransmitWindow)
}

// giveUp fails r; a LOCK that may have been granted gets a clean-up UNLOCK.
func (c *serverConn) giveUp(r *request, err error) {
	if c.fail(r, err) && r.op == wire.OpLock && r.id != 0 {
		c.cleanups = append(c.cleanups, cleanup{lockID: r.id, key: r.key})
	}
}

// fail completes r with a local outcome; err nil means "session lost".
func (c *serverConn) fail(r *request, err error) bool {
	from := r.state.Load()
	if from == stateDone || from == stateCancelled {
		return false
	}
	res := result{err: err}
	if err == nil {
		res = result{op: wire.OpDisconnected, session: r.session}
	}
	return r.complete(from, res)
}

// drop gives up the sender's hold on r.
func (c *serverConn) drop(r *request) {
	if r.id != 0 {
		c.table.release(r.id, r)
	}
	r.release()
}

func (c *serverConn) sendCleanups(session uint64) {
	if session == 0 {
		c.cleanups = c.cleanups[:0] // the session, and its locks, are gone anyway
		return
	}
	for _, u := range c.cleanups {
		b := c.reserve(session, wire.UnlockSize(len(u.key)))
		*b = wire.AppendUnlock(*b, c.takeID(), u.lockID, u.key)
	}
	clear(c.cleanups)
	c.cleanups = c.cleanups[:0]
}

// maybeConnect sends a CONNECT when none is in flight or the last one went unanswered.
// Retransmissions start at connRetryMin and double up to the caller's timeout: a
// server that is just starting is found at once, a dead one is not flooded.
func (c *serverConn) maybeConnect(now int64) {
	if c.connSent != 0 && now-c.connSent < c.connBackoff {
		return
	}
	if c.connSent == 0 {
		c.connNonce.Store(rand.Uint64() | 1) // a new nonce per session wanted
		c.connBackoff = connRetryMin
	} else {
		c.connBackoff = min(2*c.connBackoff, c.connWait.Load())
	}
	c.connSent = now
	c.closeDatagram()
	buf := c.outBufs[len(c.out)][:0]
	buf = wire.BeginDatagram(buf, wire.Header{})
	buf = wire.AppendConnect(buf, c.connNonce.Load(), c.info)
	if pad := wire.MinConnectDatagram - (len(buf) + wire.TrailerSize); pad > 0 {
		buf = wire.AppendPad(buf, max(pad, wire.FrameHeaderSize))
	}
	buf = wire.FinishDatagram(buf)
	c.out = append(c.out, batchio.Message{Buf: buf})
	c.pendingFrames++
	if len(c.out) == cap(c.out) {
		c.writeOut()
	}
}

// Packing. The batch is c.out[:len]; the datagram being filled, if any, is
// c.outBufs[len(c.out)] from c.dgStart.

func (c *serverConn) beginBatch(session uint64) {
	c.out = c.out[:0]
	c.dgStart = -1
	c.dgSession = session
}

// reserve returns the datagram buffer to append a frame of size n to, opening a new
// datagram, or writing out a full batch, as needed.
func (c *serverConn) reserve(session uint64, n int) *[]byte {
	if c.dgStart >= 0 && (c.unbatched || len(c.outBufs[len(c.out)])+n+wire.TrailerSize > wire.MaxDatagram || session != c.dgSession) {
		c.closeDatagram()
	}
	if c.dgStart < 0 {
		if len(c.out) == cap(c.out) {
			c.writeOut()
		}
		c.dgSession = session
		c.dgStart = 0
		c.outBufs[len(c.out)] = wire.BeginDatagram(c.outBufs[len(c.out)][:0], wire.Header{Session: session, Floor: c.floor})
	}
	c.pendingFrames++ // counted per frame, published per system call
	return &c.outBufs[len(c.out)]
}

func (c *serverConn) closeDatagram() {
	if c.dgStart < 0 {
		return
	}
	i := len(c.out)
	c.outBufs[i] = wire.FinishDatagram(c.outBufs[i])
	c.out = append(c.out, batchio.Message{Buf: c.outBufs[i]})
	c.dgStart = -1
	if len(c.out) == cap(c.out) || c.unbatched {
		c.writeOut()
	}
}

// flush writes out what the batch holds and reports whether anything left.
func (c *serverConn) flush(now int64) bool {
	c.closeDatagram()
	if len(c.out) == 0 {
		return false
	}
	c.writeOut()
	c.lastSend = now
	return true
}

func (c *serverConn) writeOut() {
	if len(c.out) == 0 {
		return
	}
	// A failed send (say, ECONNREFUSED from a server that went away) loses these
	// datagrams like any other loss: the retransmission scan covers them.
	n, _ := c.bc.WriteBatch(c.out)
	c.stats.sendCalls.Add(1)
	c.stats.datagramsOut.Add(uint64(n))
	c.stats.framesOut.Add(c.pendingFrames)
	c.pendingFrames = 0
	c.out = c.out[:0]
}

// recvLoop reads batches of reply datagrams and completes their requests. It never
// blocks on a waiter.
func (c *serverConn) recvLoop() {
	defer c.wg.Done()
	for {
		n, err := c.bc.ReadBatch(c.in)
		if err != nil {
			if c.closing.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // the server is not there (yet): time-outs decide
			}
			time.Sleep(time.Millisecond) // an unexpected error: do not spin on it
			continue
		}
		frames := c.handleBatch(n)
		// Under load (more than one reply at a time), take the next replies without
		// parking in the netpoller: a scheduler busy with callers polls the network
		// late. Yielding between tries lets the callers just woken run first. A lone
		// reply parks at once: spinning would only delay a single caller.
		for idle := 0; frames > 1 && idle < batchio.RecvSpins; {
			runtime.Gosched()
			n, err := c.bc.TryReadBatch(c.in)
			if err != nil || n == 0 {
				idle++
				continue
			}
			c.handleBatch(n)
			idle = 0
		}
	}
}


// handleBatch decodes n received datagrams, completes their requests and returns how
// many frames they carried.
func (c *serverConn) handleBatch(n int) uint64 {
	var f wire.Frame
	c.stats.recvCalls.Add(1)
	c.stats.datagramsIn.Add(uint64(n))
	frames := uint64(0)
	for i := 0; i < n; i++ {
		d, err := wire.Parse(c.in[i].Buf[:c.in[i].N], true)
		if err != nil {
			c.stats.badIn.Add(1)
			continue
		}
		if d.Flags&wire.FlagBusy != 0 {
			c.stats.busy.Add(1)
			c.busy.Store(true)
		}
		for d.Next(&f) {
			frames++
			c.handleReply(d.Session, &f)
		}
	}
	c.stats.framesIn.Add(frames)
	return frames
}

func (c *serverConn) handleReply(session uint64, f *wire.Frame) {
	if f.Op == wire.OpConnected || (f.ID == c.connNonce.Load() && f.Op == wire.OpRedirect) {
		c.handleConnectReply(f)
		return
	}
	r := c.table.lookup(f.ID)
	if r == nil {
		return // late, duplicated, or a TOUCH's reply
	}
	if f.Op == wire.OpDisconnected && !c.leaving.Load() {
		// The server forgot this session (restart, time-out): connect anew.
		c.session.CompareAndSwap(session, 0)
	}
	if f.Op == wire.OpIsolated {
		c.isolated.Store(true)
	}
	if r.complete(f.ID, replyResult(f, session)) {
		c.table.release(f.ID, r)
	}
}

func (c *serverConn) handleConnectReply(f *wire.Frame) {
	if f.ID != c.connNonce.Load() || c.session.Load() != 0 {
		return // a duplicate, or the reply to an earlier attempt
	}
	if f.Op == wire.OpRedirect {
		addr := string(f.Addr)
		c.redirect.Store(&addr)
	} else {
		con := f.Connected()
		c.server.Store(&serverInfo{
			maxTTL:           time.Duration(con.MaxTTLMs) * time.Millisecond,
			sessionTimeout:   time.Duration(con.SessionTimeoutMs) * time.Millisecond,
			retransmitWindow: time.Duration(con.RetransmitWindowMs) * time.Millisecond,
			servers:          con.Servers,
		})
		c.session.Store(con.Session)
	}
	select {
	case c.connected <- struct{}{}:
	default:
	}
	if c.sleeping.CompareAndSwap(true, false) {
		c.wakeSender()
	}
}

// clusterAddrs returns the cluster's addresses as the server told them, or fallback.
func (c *serverConn) clusterAddrs(fallback []string) []string {
	si := c.server.Load()
	if si == nil || len(si.servers) == 0 {
		return fallback
	}
	addrs := make([]string, 0, len(si.servers))
	for _, s := range si.servers {
		addrs = append(addrs, s.Addr)
	}
	return addrs
}
