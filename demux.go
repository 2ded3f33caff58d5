// Stage: the receive loop. One ReadBatch (recvmmsg on Linux) for many reply datagrams;
// each datagram is checked whole, each frame finds its waiter by request id in the
// in-flight table, and the waiter is woken. The loop never blocks on a waiter.
package netmutex

import (
	"errors"
	"net"
	"runtime"
	"syscall"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/wire"
)

// recvLoop reads batches of reply datagrams and completes their requests.
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

// handleReply routes one reply frame: to the handshake, or to its waiter.
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
	c.deliver(r, session, f)
}

// deliver completes r with f if r is still waiting for exactly f's id on this
// connection. r may be stale: the slot was read before r finished and was recycled.
// Its id check alone holds on this connection, where ids only grow; the owner check
// keeps a record of another connection, whose ids are counted apart, out of reach.
func (c *serverConn) deliver(r *request, session uint64, f *wire.Frame) {
	if r.conn != c {
		return
	}
	if r.complete(f.ID, replyResult(f, session)) {
		c.table.release(f.ID, r)
	}
}
