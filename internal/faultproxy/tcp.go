// TCPProxy: a TCP proxy for tests that partitions raft traffic. It forwards each accepted
// connection to the upstream over a connection of its own, and blackholes either every
// connection or those whose client (source) IP is given, as a network partition would.

package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// tcpBuffer is the copy buffer of one direction of one connection; 32 KiB is io.Copy's.
const tcpBuffer = 32 << 10

// TCPProxy is a running TCP proxy. Its methods are safe for concurrent use.
//
// While a connection is blackholed it stalls: nothing is forwarded either way, and its
// copies stop reading, so the kernel buffers hold whatever is sent. When the blackhole is
// lifted the connections that stalled are closed (with a reset), as a partition's
// connections would time out, and new connections work again; a connection accepted
// during the blackhole is never connected upstream, as its SYN would have been lost.
type TCPProxy struct {
	ln       *net.TCPListener
	addr     netip.AddrPort
	upstream string
	ctx      context.Context // ends upstream dials on Close
	cancel   context.CancelFunc

	mu     sync.Mutex
	cond   *sync.Cond // signalled on every change of the blackholes and on Close
	all    bool
	from   map[netip.Addr]bool
	conns  map[*tcpConn]struct{}
	closed bool

	wg sync.WaitGroup
}

// tcpConn is one client connection and its upstream connection.
type tcpConn struct {
	src  netip.Addr
	down *net.TCPConn
	up   *net.TCPConn // nil until dialed; guarded by TCPProxy.mu
	// stalled is set while the connection matches a blackhole and stays set, so that
	// lifting the blackhole closes it; dead once it is closed. Both guarded by mu.
	stalled, dead bool
}

// NewTCP accepts on listen and forwards every connection to upstream over a new
// connection.
func NewTCP(listen, upstream string) (*TCPProxy, error) {
	laddr, err := net.ResolveTCPAddr("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	ln, err := net.ListenTCP("tcp", laddr)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &TCPProxy{
		ln:       ln,
		addr:     ln.Addr().(*net.TCPAddr).AddrPort(),
		upstream: upstream,
		ctx:      ctx,
		cancel:   cancel,
		from:     make(map[netip.Addr]bool),
		conns:    make(map[*tcpConn]struct{}),
	}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the address clients connect to.
func (p *TCPProxy) Addr() netip.AddrPort { return p.addr }

// Blackhole stalls every connection while on.
func (p *TCPProxy) Blackhole(on bool) {
	p.mu.Lock()
	p.all = on
	p.update()
	p.mu.Unlock()
}

// BlackholeFrom stalls the connections whose client IP is ip while on.
func (p *TCPProxy) BlackholeFrom(ip netip.Addr, on bool) {
	p.mu.Lock()
	if on {
		p.from[ip.Unmap()] = true
	} else {
		delete(p.from, ip.Unmap())
	}
	p.update()
	p.mu.Unlock()
}

// update marks the connections a blackhole now matches and closes those it no longer
// does. The caller holds mu.
func (p *TCPProxy) update() {
	for c := range p.conns {
		if p.matches(c) {
			c.stalled = true
		} else if c.stalled {
			p.kill(c)
		}
	}
	p.cond.Broadcast()
}

func (p *TCPProxy) matches(c *tcpConn) bool { return p.all || p.from[c.src] }

// kill closes c with a reset. The caller holds mu.
func (p *TCPProxy) kill(c *tcpConn) {
	if c.dead {
		return
	}
	c.dead = true
	c.down.SetLinger(0)
	c.down.Close()
	if c.up != nil {
		c.up.SetLinger(0)
		c.up.Close()
	}
	delete(p.conns, c)
}

// Close closes the listener and every connection, and returns when every goroutine of the
// proxy has ended.
func (p *TCPProxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errClosed
	}
	p.closed = true
	for c := range p.conns {
		p.kill(c)
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *TCPProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		down, err := p.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond) // e.g. out of file descriptors: let some close
			continue
		}
		src := down.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		c := &tcpConn{src: src, down: down}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			down.Close()
			return
		}
		p.conns[c] = struct{}{}
		c.stalled = p.matches(c)
		p.mu.Unlock()
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve connects c upstream unless it is blackholed, and copies both ways.
func (p *TCPProxy) serve(c *tcpConn) {
	defer p.wg.Done()
	if !p.wait(c) {
		return
	}
	var d net.Dialer
	up, err := d.DialContext(p.ctx, "tcp", p.upstream)
	if err != nil {
		p.mu.Lock()
		p.kill(c)
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	c.up = up.(*net.TCPConn)
	if c.dead {
		// Closed or healed while dialing.
		c.up.Close()
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	done := make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.pipe(c, c.up, c.down)
		close(done)
	}()
	p.pipe(c, c.down, c.up)
	<-done
	p.mu.Lock()
	p.kill(c)
	p.mu.Unlock()
}

// wait blocks while c is blackholed. It reports whether c may go on: false once c has been
// closed, or has stalled (a stalled connection is closed when the blackhole lifts).
func (p *TCPProxy) wait(c *tcpConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !c.dead && p.matches(c) {
		c.stalled = true
		p.cond.Wait()
	}
	return !c.dead && !c.stalled
}

// pipe copies src to dst, holding each read until c may forward it. At src's end it
// passes the half-close on; any other failure closes c.
func (p *TCPProxy) pipe(c *tcpConn, src, dst *net.TCPConn) {
	buf := make([]byte, tcpBuffer)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait(c) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err == io.EOF {
			dst.CloseWrite()
			return
		}
		if err != nil {
			p.mu.Lock()
			p.kill(c)
			p.mu.Unlock()
			return
		}
	}
}
