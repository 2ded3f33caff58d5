// Stage: one server connection. Its socket (behind the batchConn seam), its two loops,
// the caller's entry point roundTrip, and close. The CONNECT handshake that gives it a
// session is in handshake.go.
package netmutex

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
	"golang.org/x/sys/cpu"
)

// batchConn is the socket the loops use: batchio's batched UDP socket, or an in-memory
// one in unit tests (as quic-go's newConn takes a batchConn). Close unblocks a
// ReadBatch in progress with an error. retarget connects the socket to another server,
// keeping its local address; only the send loop calls it.
type batchConn interface {
	batchio.Conn
	Close() error
	retarget(to netip.AddrPort) error
}

// udpConn is a connected UDP socket behind batchio.
type udpConn struct {
	batchio.Conn
	sock *net.UDPConn
}

func (u udpConn) Close() error { return u.sock.Close() }

func (u udpConn) retarget(to netip.AddrPort) error { return reconnect(u.sock, to) }

var _ batchConn = udpConn{}

const (
	// ringSize bounds the requests pushed and not yet taken by the sender, which drains
	// the ring whole every round: thousands per millisecond. A slot fills a cache line,
	// so 1024 slots cost 64 KB a connection; the in-flight table's 16384 would cost 1 MB,
	// which a fleet of small clients pays per NetMutex. A full ring only makes its caller
	// wait for room (push).
	ringSize = 1024
	// connRetryMin is the first wait before a CONNECT is sent again: a server that is
	// just starting is found within it, and a lost CONNECT costs no more.
	connRetryMin = int64(50 * time.Millisecond)
	// fullRingYields is how often a caller facing a full ring yields before it sleeps
	// fullRingPause between tries: the send loop drains thousands per millisecond, so a
	// full ring is a burst that clears quickly, and sleeping frees the core it needs.
	fullRingYields = 16
	fullRingPause  = 50 * time.Microsecond
)

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
	addr     string                 // the address dialed
	target   atomic.Pointer[string] // the address the socket points at now (retarget.go)
	bc       batchConn
	ring     *ring
	table    inflight
	requests requestPool
	info     string        // IsolationInfo sent with CONNECT
	keys     *seal.Keyring // nil: plain datagrams

	session   atomic.Uint64 // 0 while there is none: the sender then connects
	isolated  atomic.Bool
	leaving   atomic.Bool // a DISCONNECT is under way: do not connect again
	server    atomic.Pointer[serverInfo]
	redirect  atomic.Pointer[string] // set when a CONNECT was answered with REDIRECT
	connected chan struct{}          // buffered 1: signalled on CONNECTED or REDIRECT
	connNonce atomic.Uint64
	connWait  atomic.Int64 // ns between CONNECT attempts, at most
	// The address-validation cookie for the current nonce, set by the receive loop from
	// COOKIE; cookieNew asks the send loop to send the CONNECT again with it at once.
	cookie    atomic.Pointer[[wire.CookieSize]byte]
	cookieNew atomic.Bool
	refused   atomic.Uint32 // the last ERROR code that answered our CONNECT, 0 = none
	sig       signals       // news of the server, from the receive loop to the send loop

	sleeping atomic.Bool
	wake     chan struct{}
	rescan   atomic.Bool // a request changed in a way only the scan acts on (askScan)
	closing  atomic.Bool
	stopped  atomic.Bool
	busy     atomic.Bool
	wg       sync.WaitGroup

	stats connStats

	// Owned by the send loop.
	pk          packer
	list        []*request // every request the sender holds a reference to
	nextID      uint64
	floor       uint64
	lastScan    int64
	nextDue     int64 // when the scan next has work: the earliest attempt's or deadline's end
	lastSend    int64
	connSent    int64 // when the last CONNECT left, 0 = none in flight
	connBackoff int64 // wait before the next CONNECT
	cleanups    []cleanup
	mv          mover // where the socket points (retarget.go)

	// Owned by the receive loop.
	spinWait     time.Duration                  // Options.SpinWait
	onBatchFn    func(n int) batchio.ReadAction // c.onBatch, bound once: ReadLoop's handler
	poller       batchio.Poller
	in           []batchio.Message
	opened       []byte                // a sealed datagram's plain content
	serverPrefix [seal.PrefixSize]byte // whose counters window tracks: the server that answers
	window       seal.Window
	// After the socket moved (retarget.go): the prefix of the server left, if it was
	// heard from, whose datagrams still queued are late; and whether the server now
	// talked to has been heard from.
	seenGen     uint32
	prefixAt    string // the address the socket pointed at when serverPrefix was learnt
	stalePrefix [seal.PrefixSize]byte
	hasStale    bool
	heard       bool
	late        bool // the datagram being handled is a late one of the server left
}

// connConfig is what a connection is made with.
type connConfig struct {
	info        string        // IsolationInfo sent with CONNECT
	keys        *seal.Keyring // nil: plain datagrams
	connectWait time.Duration // the longest wait between CONNECT attempts
	timeout     time.Duration // the wait for an answer to a TOUCH (0: DefaultTimeout)
	notify      chan struct{} // signalled when a CONNECT is answered
	unbatched   bool          // one frame per datagram per call: the benchmarks' baseline
	spinWait    time.Duration // Options.SpinWait
}

// firstIDRange bounds a connection's first request id, drawn at random so that lock
// ids (request ids of LOCKs) cannot be guessed from one's own; below 2^61 leaves room
// under the server's answer bits (62, 63) for any number of requests.
const firstIDRange = 1 << 61

// connStats are counters for the benchmark and tests. The send loop's and the receive
// loop's are padded onto cache lines of their own, so the two loops do not bounce one
// line between cores.
type connStats struct {
	_                                                      cpu.CacheLinePad
	framesOut, datagramsOut, sendCalls, retransmits, moves atomic.Uint64
	senderWakes                                            atomic.Uint64 // the send loop's returns from sleep
	_                                                      cpu.CacheLinePad
	framesIn, datagramsIn, recvCalls, badIn, busy          atomic.Uint64
	notLeader                                              atomic.Uint64
	_                                                      cpu.CacheLinePad
}

// dialServer opens a socket to addr and starts its loops, which connect at once.
func dialServer(addr string, cfg connConfig) (*serverConn, error) {
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
	c := newServerConn(addr, udpConn{bc, sock}, cfg)
	c.mv.cur, _ = usable(ua.AddrPort())
	c.start()
	return c, nil
}

// newServerConn makes a connection over bc without starting its loops.
func newServerConn(addr string, bc batchConn, cfg connConfig) *serverConn {
	first := 1 + rand.Uint64N(firstIDRange)
	c := &serverConn{
		addr:      addr,
		bc:        bc,
		ring:      newRing(ringSize),
		info:      cfg.info,
		keys:      cfg.keys,
		connected: cfg.notify,
		wake:      make(chan struct{}, 1),
		list:      make([]*request, 0, inflightSize),
		nextID:    first,
		floor:     first,
		in:        make([]batchio.Message, batchio.MaxBatch),
		opened:    make([]byte, 0, 2*wire.MaxDatagram),
	}
	c.target.Store(&c.addr)
	c.mv.timeout = int64(cfg.timeout)
	if c.mv.timeout <= 0 {
		c.mv.timeout = int64(DefaultTimeout)
	}
	c.requests.init(c)
	c.pk.init(bc, &c.stats, cfg.unbatched, cfg.keys)
	for i := range c.in {
		// Room for a datagram larger than we ever expect, so an oversized one is seen
		// whole and rejected by its length check rather than truncated.
		c.in[i].Buf = make([]byte, 2*wire.MaxDatagram)
	}
	c.connWait.Store(int64(cfg.connectWait))
	c.spinWait = cfg.spinWait
	c.onBatchFn = c.onBatch
	return c
}

func (c *serverConn) start() {
	c.wg.Add(2)
	go c.sendLoop()
	go c.recvLoop()
}

// close stops both loops and closes the socket; waiting requests get ErrDisconnected.
func (c *serverConn) close() {
	if c.closing.Swap(true) {
		c.wg.Wait()
		return
	}
	c.wakeSender()
	c.bc.Close()
	c.wg.Wait()
}

// wakeIfSleeping wakes the send loop if it sleeps.
func (c *serverConn) wakeIfSleeping() {
	if c.sleeping.Load() && c.sleeping.CompareAndSwap(true, false) {
		c.wakeSender()
	}
}

// askScan makes the send loop scan at its next chance, within scanInterval: a request
// changed in a way only the scan acts on (QUEUED, a cancel after it left), and the
// loop may be asleep until an attempt's end.
func (c *serverConn) askScan() {
	c.rescan.Store(true)
	c.wakeIfSleeping()
}

func (c *serverConn) wakeSender() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// roundTrip sends r and waits for its result; ctx, if not nil, can cancel the wait.
func (c *serverConn) roundTrip(r *request, ctx context.Context) result {
	if err := c.push(r, ctx); err != nil {
		r.res = result{err: err}
		r.release() // the send loop's reference: it never saw r
		return r.finish()
	}
	c.wakeIfSleeping()
	if c.stopped.Load() {
		if _, ok := r.cancel(); ok {
			// The sender may have gone before it saw r; nobody else will answer.
			r.res = result{err: ErrDisconnected}
			return r.finish()
		}
	}
	if ctx == nil {
		<-r.done
		return r.finish()
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		if id, ok := r.cancel(); ok {
			if id != 0 {
				c.askScan() // its clean-up UNLOCK is the scan's to send, now
			}
			r.res = result{err: ctx.Err(), id: id}
			return r.finish()
		}
		<-r.done
	}
	return r.finish()
}

// push puts r in the ring. A full ring means ringSize callers already wait on this
// connection: the caller waits for room, never dropping r, until its context ends, its
// deadline passes, or the time its attempts would have taken runs out.
func (c *serverConn) push(r *request, ctx context.Context) error {
	var giveUp int64
	for tries := 0; !c.ring.push(r); tries++ {
		if c.stopped.Load() || c.closing.Load() {
			return ErrDisconnected
		}
		if ctx != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		now := nanotime()
		if r.deadline != 0 && now >= r.deadline {
			return errDeadline
		}
		if giveUp == 0 {
			giveUp = now + int64(r.attempts)*r.timeout
		} else if now >= giveUp {
			return ErrTooMuchRetries
		}
		if tries < fullRingYields {
			runtime.Gosched()
		} else {
			time.Sleep(fullRingPause)
		}
	}
	return nil
}
