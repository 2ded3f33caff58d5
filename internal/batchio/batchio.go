// Package batchio moves UDP datagrams in batches: many datagrams per system call where
// the OS allows it (recvmmsg/sendmmsg on Linux), one per call elsewhere, behind one small
// interface shared by the client and the server.
//
// The build tag netmutex_portable selects the one-datagram-per-call path on Linux too,
// so that CI runs the portable path where it runs everything else.
package batchio

import (
	"net"
	"net/netip"
	"runtime"
	"time"
)

// Message is one datagram of a batch.
//
// For ReadBatch, Buf is the space to fill (its full length is offered to the kernel);
// on return N is the number of bytes received and Addr the sender.
// For WriteBatch, Buf is the whole datagram and Addr its destination; Addr is ignored
// on a connected socket.
type Message struct {
	Buf  []byte
	N    int
	Addr netip.AddrPort
}

// Conn reads and writes batches of datagrams on one UDP socket.
//
// ReadBatch may be called by one goroutine at a time, and WriteBatch by one goroutine at
// a time; a reader and a writer may run together.
type Conn interface {
	// ReadBatch blocks in the Go netpoller until at least one datagram is there, then
	// fills up to len(ms) (at most MaxBatch) messages and returns how many. It honours
	// the socket's read deadline.
	ReadBatch(ms []Message) (int, error)
	// TryReadBatch is ReadBatch without the wait: 0, nil when nothing is there. A loop
	// that just handled a batch uses it to take the next one while traffic flows,
	// without parking in the netpoller, which a busy scheduler polls late.
	TryReadBatch(ms []Message) (int, error)
	// WriteBatch sends ms, as few system calls as it can, and returns how many were sent.
	WriteBatch(ms []Message) (int, error)
	// ReadLoop reads batches into ms and hands each to handle, which says what to do
	// next, until handle says Stop (nil) or a read fails (closed, a deadline). It saves
	// ReadBatch's empty try per wake-up: after a batch that did not fill ms the socket
	// was empty, so it parks at once and the next datagram wakes it.
	ReadLoop(ms []Message, handle func(n int) ReadAction) error
}

// ReadAction is what a ReadLoop handler asks for after a batch.
type ReadAction uint8

const (
	// Wait parks in the netpoller until the next datagram (or the deadline).
	Wait ReadAction = iota
	// Poll yields, then tries a read at once; if it finds nothing, handle is called
	// with 0, so a handler that polls sees every empty try.
	Poll
	// Stop ends ReadLoop with a nil error.
	Stop
)

// LoopOver is ReadLoop built on c's ReadBatch and TryReadBatch: for a Conn with no
// faster way (the portable path, in-memory sockets in tests).
func LoopOver(c Conn, ms []Message, handle func(n int) ReadAction) error {
	n, err := c.ReadBatch(ms)
	for {
		if err != nil {
			return err
		}
		switch handle(n) {
		case Stop:
			return nil
		case Poll:
			runtime.Gosched()
			n, err = c.TryReadBatch(ms)
		default:
			n, err = c.ReadBatch(ms)
		}
	}
}

// RecvSpins is how many empty TryReadBatch calls a receive loop makes, yielding between
// them, before it parks in a blocking ReadBatch. Two: a scheduler busy with the callers
// just woken polls the network late, and replies that were on their way arrive within a
// yield or two; more only burns a core that the callers need.
const RecvSpins = 2

// Poller decides, after each read of a ReadLoop, whether the loop polls or parks: the
// client's receive loop and the server's loop share it. Under load (a read that began a
// poll carried more than one request or reply) it polls RecvSpins times in a row, since
// a scheduler busy with the goroutines just woken polls the network late; a lone one
// parks at once. With a spin (SpinWait) it keeps polling until that long after the last
// datagram. Owned by the reading goroutine; the zero value is ready.
type Poller struct {
	polling bool  // the last answer was Poll
	busy    bool  // the read that began this poll carried more than one request
	idle    int   // empty tries in a row
	spinEnd int64 // with a spin: poll until then (now's clock); 0: no spin
}

// Next takes a read of n datagrams (0: an empty poll) that carried more than one
// request if busy, at now (monotonic nanoseconds), and answers Poll or Wait. spin is
// the SpinWait (0: none; ignored where !CanPoll); spinOK false ends a spin early (the
// server's tick is due).
func (p *Poller) Next(n int, busy bool, now int64, spin time.Duration, spinOK bool) ReadAction {
	if n > 0 {
		if !p.polling {
			p.busy = busy
		}
		p.idle = 0
		if spin > 0 && CanPoll {
			p.spinEnd = now + int64(spin)
		}
	} else {
		p.idle++
	}
	if (p.busy && p.idle < RecvSpins) || (p.spinEnd != 0 && now < p.spinEnd && spinOK) {
		p.polling = true
		return Poll
	}
	*p = Poller{}
	return Wait
}

// MaxSpinWait bounds how long a loop may poll the socket instead of parking (the client's
// Options.SpinWait, the server's Config.SpinWait): it saves a thread's wake-up, tens of
// microseconds, and past a few round trips polling only burns the core.
const MaxSpinWait = 10 * time.Millisecond

// New wraps a UDP socket, connected (net.DialUDP) or not (net.ListenUDP).
func New(c *net.UDPConn) (Conn, error) { return newConn(c) }

// SocketBuffer is the socket buffer size asked for in each direction. Many callers'
// requests arrive in bursts: a default buffer of about 200 KB drops a burst of a few
// hundred datagrams, and every drop costs a retransmission timeout. The kernel caps the
// request at net.core.rmem_max and wmem_max.
const SocketBuffer = 4 << 20

// SetBuffers enlarges the socket's buffers, as far as the system allows; a refusal is
// not an error, the default buffers still work.
func SetBuffers(c *net.UDPConn) {
	_ = c.SetReadBuffer(SocketBuffer)
	_ = c.SetWriteBuffer(SocketBuffer)
}
