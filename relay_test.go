package netmutex

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// relay stands for the servers of a cluster as clients see them: each front is an
// address a client sends to, forwarded to an upstream server the test can change, cut
// off (silent) or close (nothing listens: the client's socket reports ECONNREFUSED).
// Every client address gets one upstream socket shared by all fronts, so a server sees
// a client at one source address whichever front it came through, as the servers of a
// real cluster see a client that moves its socket between them. Replies go back through
// the front the client last sent to.
type relay struct {
	t      testing.TB
	mu     sync.Mutex
	fronts []*front
	flows  map[netip.AddrPort]*flow
	closed bool
	wg     sync.WaitGroup
}

// front is one address of the relay.
type front struct {
	r        *relay
	sock     *net.UDPConn
	addr     string
	up       netip.AddrPort // guarded by r.mu; invalid: drop
	silent   bool           // guarded by r.mu
	received atomic.Uint64  // datagrams from clients, silent or not
}

// flow is one client address and its upstream socket.
type flow struct {
	client netip.AddrPort
	up     *net.UDPConn
	via    *front // guarded by r.mu
}

// newRelay starts a relay of n fronts on 127.0.0.1, without upstreams yet. It stops when
// the test ends.
func newRelay(t testing.TB, n int) *relay {
	r := &relay{t: t, flows: map[netip.AddrPort]*flow{}}
	for i := 0; i < n; i++ {
		sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		f := &front{r: r, sock: sock, addr: sock.LocalAddr().String()}
		r.fronts = append(r.fronts, f)
		r.wg.Add(1)
		go f.serve()
	}
	t.Cleanup(r.close)
	return r
}

// to sets where front i forwards, and makes it heard again.
func (r *relay) to(i int, up netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fronts[i].up, r.fronts[i].silent = up, false
}

// silence cuts front i off, both ways, or heals it.
func (r *relay) silence(i int, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fronts[i].silent = on
}

// kill closes front i: nothing listens at its address any more.
func (r *relay) kill(i int) { r.fronts[i].sock.Close() }

func (r *relay) addr(i int) string { return r.fronts[i].addr }

func (r *relay) received(i int) uint64 { return r.fronts[i].received.Load() }

func (f *front) serve() {
	defer f.r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := f.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		f.received.Add(1)
		r := f.r
		r.mu.Lock()
		if r.closed || f.silent || !f.up.IsValid() {
			r.mu.Unlock()
			continue
		}
		fl := r.flows[from]
		if fl == nil {
			up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				r.mu.Unlock()
				continue
			}
			fl = &flow{client: from, up: up}
			r.flows[from] = fl
			r.wg.Add(1)
			go r.back(fl)
		}
		fl.via = f
		to := f.up
		r.mu.Unlock()
		fl.up.WriteToUDPAddrPort(buf[:n], to)
	}
}

// back forwards what the servers send to a flow's client, through the front it last
// used.
func (r *relay) back(fl *flow) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, _, err := fl.up.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		via := fl.via
		silent := via.silent
		r.mu.Unlock()
		if !silent {
			via.sock.WriteToUDPAddrPort(buf[:n], fl.client)
		}
	}
}

func (r *relay) close() {
	r.mu.Lock()
	r.closed = true
	for _, f := range r.fronts {
		f.sock.Close()
	}
	for _, fl := range r.flows {
		fl.up.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
