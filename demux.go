// Stage: the receive loop. One ReadBatch (recvmmsg on Linux) for many reply datagrams;
// each datagram is checked whole, each frame finds its waiter by request id in the
// in-flight table, and the waiter is woken. The loop never blocks on a waiter.
package netmutex

import (
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// recvLoop reads batches of reply datagrams and completes their requests, inside one
// ReadLoop for as long as reads succeed.
func (c *serverConn) recvLoop() {
	defer c.wg.Done()
	for {
		err := c.bc.ReadLoop(c.in, c.onBatchFn)
		c.poller = batchio.Poller{}
		if err == nil || c.readFailed(err) {
			return // Stop: closing
		}
	}
}

// onBatch completes the requests of n received datagrams (0: a poll found nothing) and
// decides the next read (batchio.Poller): poll, yielding between tries so that the
// callers just woken run first, or park.
func (c *serverConn) onBatch(n int) batchio.ReadAction {
	if c.closing.Load() {
		return batchio.Stop
	}
	var frames uint64
	if n > 0 {
		frames = c.handleBatch(n)
	}
	return c.poller.Next(n, frames > 1, nanotime(), c.spinWait, true)
}

// readFailed takes a read's error and reports whether the socket is closed.
func (c *serverConn) readFailed(err error) bool {
	switch {
	case c.closing.Load() || errors.Is(err, net.ErrClosed):
		return true
	case errors.Is(err, syscall.ECONNREFUSED):
		// Nothing listens there: the send loop moves to another server of the cluster
		// if there is one; otherwise time-outs decide.
		c.sig.unreachable.Store(true)
		c.wakeIfSleeping()
	default:
		time.Sleep(time.Millisecond) // an unexpected error: do not spin on it
	}
	return false
}

// handleBatch decodes n received datagrams, completes their requests and returns how
// many frames they carried.
func (c *serverConn) handleBatch(n int) uint64 {
	var f wire.Frame
	c.stats.recvCalls.Add(1)
	c.stats.datagramsIn.Add(uint64(n))
	if c.keys != nil {
		if g := c.sig.gen.Load(); g != c.seenGen {
			// The socket moved to another server, or back: moves with no reply read
			// between them (A, B, C, then A again) must not leave A's prefix taken
			// for a late one while A answers.
			c.seenGen = g
			if c.heard && c.prefixAt == c.currentAddr() {
				c.hasStale = false
			} else {
				c.stalePrefix, c.hasStale, c.heard = c.serverPrefix, c.heard, false
			}
		}
	}
	frames := uint64(0)
	served := false
	for i := 0; i < n; i++ {
		d, prefix, err := c.open(c.in[i].Buf[:c.in[i].N])
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
			served = served || serves(&f)
			c.handleReply(d.Session, &f, prefix)
		}
	}
	c.stats.framesIn.Add(frames)
	if served && !c.sig.served.Load() {
		c.sig.served.Store(true)
	}
	return frames
}

// errReplay marks a sealed reply seen before.
var errReplay = errors.New("netmutex: replayed reply")

// open checks a received datagram whole and returns it parsed, with the nonce prefix of
// the server that sealed it. With keys, only a sealed reply that opens is believed; the
// one plain reply looked at is an ERROR AUTH answering our CONNECT, which only explains
// why no session comes. Counters are checked against a replay window for the server
// that granted the session; a reply under another prefix (before CONNECTED, or from a
// restarted server) can only complete a request waiting for its exact id, and request
// ids are never reused on a connection, so a replay of it finds nobody. After the socket
// moved to another server, the first reply that opens under a prefix other than the
// server left's is the new server's: its counters are tracked from there, and a reply
// still under the old one is late.
func (c *serverConn) open(b []byte) (wire.Datagram, [seal.PrefixSize]byte, error) {
	var prefix [seal.PrefixSize]byte
	if c.keys == nil {
		if seal.IsSealed(b) {
			return wire.Datagram{}, prefix, seal.ErrNotSealed
		}
		d, err := wire.Parse(b, true)
		return d, prefix, err
	}
	if !seal.IsSealed(b) {
		c.noteAuthRefusal(b)
		return wire.Datagram{}, prefix, seal.ErrNotSealed
	}
	plain, _, nonce, err := c.keys.Open(c.opened[:0], b)
	if err != nil {
		return wire.Datagram{}, prefix, err
	}
	c.late = c.hasStale && nonce.Prefix == c.stalePrefix && !(c.heard && nonce.Prefix == c.serverPrefix)
	if !c.heard && !c.late {
		if nonce.Prefix != c.serverPrefix {
			c.serverPrefix, c.window = nonce.Prefix, seal.Window{}
		}
		c.heard = true
		c.prefixAt = c.currentAddr()
	}
	if nonce.Prefix == c.serverPrefix && !c.window.Accept(nonce.Counter) {
		return wire.Datagram{}, prefix, errReplay
	}
	d, err := wire.Parse(plain, true)
	return d, nonce.Prefix, err
}

// noteAuthRefusal records a plain ERROR AUTH answering our CONNECT (or naming no id,
// when the server could not read it). It cannot be authenticated, so it never fails a
// session: Open reports it only if no server granted one in time.
func (c *serverConn) noteAuthRefusal(b []byte) {
	d, err := wire.Parse(b, true)
	if err != nil || c.session.Load() != 0 {
		return
	}
	var f wire.Frame
	for d.Next(&f) {
		if f.Op == wire.OpError && f.Code == wire.CodeAuth && (f.ID == 0 || f.ID == c.connNonce.Load()) {
			c.refused.Store(uint32(wire.CodeAuth))
		}
	}
}

// handleReply routes one reply frame: to the handshake, or to its waiter.
func (c *serverConn) handleReply(session uint64, f *wire.Frame, prefix [seal.PrefixSize]byte) {
	if f.Op == wire.OpConnected || (f.ID == c.connNonce.Load() && (f.Op == wire.OpRedirect || f.Op == wire.OpCookie || f.Op == wire.OpError)) {
		c.handleConnectReply(f, prefix)
		return
	}
	switch f.Op {
	case wire.OpRedirect, wire.OpCookie, wire.OpError:
		if f.ID != 0 && f.ID == c.sig.probe.Load() {
			c.handleProbeReply(f)
			return
		}
		if f.Op == wire.OpError && f.Code == wire.CodeNotLeader {
			c.handleNotLeader(f.ID)
			return
		}
	}
	r := c.table.lookup(f.ID)
	if r == nil || r.conn != c || r.state.Load() != f.ID {
		return // late, duplicated, a TOUCH's reply, or not ours
	}
	// Only a reply to a waiting request changes the connection's state, and before the
	// caller wakes: a stray DISCONNECTED or ISOLATED changes nothing.
	if f.Op == wire.OpDisconnected && !c.leaving.Load() {
		// The server forgot this session (restart, time-out): connect anew.
		if c.session.CompareAndSwap(session, 0) {
			c.askScan()
		}
	}
	if f.Op == wire.OpIsolated && session == c.session.Load() {
		c.isolated.Store(true)
	}
	if f.Op == wire.OpQueued {
		r.queued.Store(true) // not an answer: the grant will follow
		c.askScan()          // the scan parks it and paces its copies from now
		return
	}
	c.deliver(r, session, f)
}

// serves reports whether f shows the server serving: anything but NOT_LEADER, or the
// REDIRECT a follower answers a probe with.
func serves(f *wire.Frame) bool {
	return f.Op != wire.OpRedirect && (f.Op != wire.OpError || f.Code != wire.CodeNotLeader)
}

// handleNotLeader takes an ERROR NOT_LEADER, which is no answer: the request waits on,
// and the send loop sends it again, with its id, to another server (retarget.go).
func (c *serverConn) handleNotLeader(id uint64) {
	c.stats.notLeader.Add(1)
	if c.late {
		return // an answer of the server the socket just left, read late
	}
	if id != c.sig.touch.Load() {
		r := c.table.lookup(id)
		if r == nil || r.conn != c || r.state.Load() != id {
			return // late, or not ours
		}
	}
	c.sig.notLeader.Store(true)
	c.wakeIfSleeping()
}

// handleProbeReply takes the answer to a probe (retarget.go): where the leader is, or
// that the probed server serves.
func (c *serverConn) handleProbeReply(f *wire.Frame) {
	switch f.Op {
	case wire.OpRedirect:
		addr := string(f.Addr)
		c.sig.leader.Store(&addr)
	case wire.OpCookie:
		c.sig.serving.Store(true)
	default:
		return // NOT_LEADER: no leader is known yet; the pause runs its course
	}
	c.wakeIfSleeping()
}

// deliver completes r with f if r is still waiting for exactly f's id on this
// connection, and reports whether it did. r may be stale: the slot was read before r
// finished and was recycled. Its id check alone holds on this connection, where ids
// only grow; the owner check keeps a record of another connection, whose ids are
// counted apart, out of reach.
func (c *serverConn) deliver(r *request, session uint64, f *wire.Frame) bool {
	if r.conn != c {
		return false
	}
	res := replyResult(f, session)
	res.sent = r.firstSent // written before the send loop published the id
	if !r.win(f.ID) {
		return false
	}
	// The slot before the signal: once signalled, the record may be recycled and claim
	// a slot for another id.
	c.table.release(f.ID, r)
	r.signal(res)
	return true
}
