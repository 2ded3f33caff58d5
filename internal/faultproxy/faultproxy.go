// Package faultproxy is a UDP proxy for tests that stands between netmutex clients and a
// server on loopback and injects faults: it drops, duplicates, reorders, delays and
// corrupts datagrams, each direction configured on its own, and can blackhole a
// direction.
//
// The proxy listens on one address. Every client address it hears from gets its own
// upstream socket connected to the server, so the server sees one distinct source per
// client, as it would without the proxy.
//
// Faults are drawn from a seeded generator: each flow (client address, direction) has
// its own generator derived from the seed and the flow's number (flows are numbered in
// the order clients first appear), so the fault pattern of every flow replays from the
// seed alone whatever the goroutine scheduling. The seed comes from Config.Seed, else
// from the environment variable named by SeedEnv, else it is random; Seed reports it and
// Config.Logf, if set, logs it.
package faultproxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// SeedEnv is the environment variable that fixes the seed when Config.Seed is 0.
const SeedEnv = "NETMUTEX_FAULT_SEED"

// maxDatagram is the largest datagram forwarded; netmutex datagrams are at most 1400
// bytes, 64 KiB covers anything UDP can carry.
const maxDatagram = 64 << 10

// maxFlows bounds the client addresses tracked, so a stray sender cannot make the
// proxy open sockets without end. Tests use a few dozen.
const maxFlows = 4096

// Direction selects one way through the proxy.
type Direction int

const (
	// ToServer is client → server.
	ToServer Direction = iota
	// ToClient is server → client.
	ToClient
)

func (d Direction) String() string {
	if d == ToServer {
		return "to-server"
	}
	return "to-client"
}

// Faults configures one direction. Probabilities are per datagram, from 0 to 1, and
// drawn independently in this order: blackhole, drop, corrupt, duplicate, delay,
// reorder.
type Faults struct {
	// Blackhole drops every datagram.
	Blackhole bool
	// Drop is the probability that a datagram is lost.
	Drop float64
	// Corrupt is the probability that 1 to 3 random bits of a datagram are flipped.
	Corrupt float64
	// Duplicate is the probability that a datagram is delivered twice; the copy leaves
	// after a random delay up to MaxDelay (at once when MaxDelay is 0).
	Duplicate float64
	// Delay is the probability that a datagram is held back for a random time up to
	// MaxDelay (later datagrams overtake it).
	Delay float64
	// MaxDelay bounds the added delay of Delay and of duplicate copies.
	MaxDelay time.Duration
	// Reorder is the probability that a datagram is held until the next datagram of its
	// flow has been delivered (or ReorderWindow has passed), so that the two swap.
	Reorder float64
	// ReorderWindow bounds how long a reordered datagram waits for a successor; 0
	// means 5ms.
	ReorderWindow time.Duration
}

// MaxLatency is the longest a datagram can spend in the proxy beyond its forwarding
// time under f: what a duplicate or a delayed datagram may arrive late by.
func (f Faults) MaxLatency() time.Duration {
	return f.MaxDelay + f.reorderWindow()
}

func (f Faults) reorderWindow() time.Duration {
	if f.ReorderWindow > 0 {
		return f.ReorderWindow
	}
	return 5 * time.Millisecond
}

// Config configures a Proxy.
type Config struct {
	// Listen is the address clients send to; "" means 127.0.0.1:0.
	Listen string
	// Upstream is the server's address.
	Upstream string
	// Seed fixes the fault generators; 0 means SeedEnv, else a random seed.
	Seed uint64
	// ToServer and ToClient are the initial faults of each direction.
	ToServer, ToClient Faults
	// Logf, if set, receives one line with the seed at start.
	Logf func(format string, args ...any)
}

// Counters count what happened to the datagrams of one direction.
type Counters struct {
	Received   uint64 // datagrams that entered the proxy in this direction
	Forwarded  uint64 // datagrams written out, duplicate copies included
	Blackholed uint64
	Dropped    uint64
	Corrupted  uint64
	Duplicated uint64
	Delayed    uint64
	Reordered  uint64
	SendErrors uint64 // writes that failed (e.g. the server is down)
}

// Stats are the counters of both directions.
type Stats struct {
	ToServer, ToClient Counters
	Flows              int // client addresses seen
}

func (s Stats) String() string {
	f := func(c Counters) string {
		return fmt.Sprintf("received=%d forwarded=%d dropped=%d blackholed=%d corrupted=%d duplicated=%d delayed=%d reordered=%d send_errors=%d",
			c.Received, c.Forwarded, c.Dropped, c.Blackholed, c.Corrupted, c.Duplicated, c.Delayed, c.Reordered, c.SendErrors)
	}
	return fmt.Sprintf("flows=%d; to-server: %s; to-client: %s", s.Flows, f(s.ToServer), f(s.ToClient))
}

type counters struct {
	received, forwarded, blackholed, dropped, corrupted atomic.Uint64
	duplicated, delayed, reordered, sendErrors          atomic.Uint64
}

func (c *counters) load() Counters {
	return Counters{
		Received: c.received.Load(), Forwarded: c.forwarded.Load(), Blackholed: c.blackholed.Load(),
		Dropped: c.dropped.Load(), Corrupted: c.corrupted.Load(), Duplicated: c.duplicated.Load(),
		Delayed: c.delayed.Load(), Reordered: c.reordered.Load(), SendErrors: c.sendErrors.Load(),
	}
}

// errClosed is returned by a second Close.
var errClosed = errors.New("faultproxy: closed")

// Proxy is a running fault-injecting proxy. Its methods are safe for concurrent use.
type Proxy struct {
	seed     uint64
	upstream *net.UDPAddr
	listen   *net.UDPConn
	addr     netip.AddrPort

	mu     sync.Mutex
	faults [2]Faults
	flows  map[netip.AddrPort]*flow
	nflows int
	closed bool

	stats [2]counters

	sched scheduler
	wg    sync.WaitGroup
}

// flow is one client address and its upstream socket.
type flow struct {
	client netip.AddrPort
	up     *net.UDPConn
	// Per direction: the generator and the datagram held for reordering. Each
	// direction's state is touched by one reading goroutine, and by the scheduler under
	// held's lock.
	dir [2]flowDir
}

type flowDir struct {
	rng    *rand.Rand // used only by the direction's reading goroutine
	heldMu sync.Mutex
	held   *item // a datagram waiting for a successor, or nil
}

// New starts a proxy to cfg.Upstream.
func New(cfg Config) (*Proxy, error) {
	up, err := net.ResolveUDPAddr("udp", cfg.Upstream)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: upstream: %w", err)
	}
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	laddr, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	seed := cfg.Seed
	if seed == 0 {
		if v := os.Getenv(SeedEnv); v != "" {
			if seed, err = strconv.ParseUint(v, 0, 64); err != nil {
				return nil, fmt.Errorf("faultproxy: %s=%q: %w", SeedEnv, v, err)
			}
		}
	}
	if seed == 0 {
		seed = rand.Uint64() | 1
	}
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p := &Proxy{
		seed:     seed,
		upstream: up,
		listen:   conn,
		addr:     conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		faults:   [2]Faults{cfg.ToServer, cfg.ToClient},
		flows:    make(map[netip.AddrPort]*flow),
	}
	p.sched.init()
	if cfg.Logf != nil {
		cfg.Logf("faultproxy %s -> %s: seed %d (replay with %s=%d)", p.addr, cfg.Upstream, seed, SeedEnv, seed)
	}
	p.wg.Add(2)
	go p.clientLoop()
	go p.schedLoop()
	return p, nil
}

// Addr is the address clients must send to.
func (p *Proxy) Addr() netip.AddrPort { return p.addr }

// Seed is the seed in use.
func (p *Proxy) Seed() uint64 { return p.seed }

// SetFaults replaces the faults of direction d.
func (p *Proxy) SetFaults(d Direction, f Faults) {
	p.mu.Lock()
	p.faults[d] = f
	p.mu.Unlock()
}

// Blackhole turns the blackholing of direction d on or off, leaving its other faults.
func (p *Proxy) Blackhole(d Direction, on bool) {
	p.mu.Lock()
	p.faults[d].Blackhole = on
	p.mu.Unlock()
}

// Faults returns the current faults of direction d.
func (p *Proxy) Faults(d Direction) Faults {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults[d]
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	n := p.nflows
	p.mu.Unlock()
	return Stats{ToServer: p.stats[ToServer].load(), ToClient: p.stats[ToClient].load(), Flows: n}
}

// Close stops every goroutine and closes every socket of the proxy; datagrams still
// held back are dropped. It returns when all goroutines have ended.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errClosed
	}
	p.closed = true
	flows := make([]*flow, 0, len(p.flows))
	for _, f := range p.flows {
		flows = append(flows, f)
	}
	p.mu.Unlock()
	err := p.listen.Close()
	for _, f := range flows {
		f.up.Close()
	}
	p.sched.stop()
	p.wg.Wait()
	return err
}

// clientLoop reads what clients send and forwards it upstream.
func (p *Proxy) clientLoop() {
	defer p.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := p.listen.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. an ICMP error reported on the socket: keep serving
		}
		f := p.flowFor(from)
		if f == nil {
			continue
		}
		p.inject(f, ToServer, buf[:n])
	}
}

// flowFor returns the flow of client, creating it and its upstream socket and reader.
func (p *Proxy) flowFor(client netip.AddrPort) *flow {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.flows[client]; f != nil || p.closed {
		return f
	}
	if len(p.flows) >= maxFlows {
		return nil
	}
	up, err := net.DialUDP("udp", nil, p.upstream)
	if err != nil {
		return nil
	}
	idx := uint64(p.nflows)
	p.nflows++
	f := &flow{client: client, up: up}
	for d := range f.dir {
		// One generator per (flow, direction): its draws depend only on the seed and the
		// datagrams of that flow, not on how goroutines interleave.
		f.dir[d].rng = rand.New(rand.NewPCG(p.seed, idx<<1|uint64(d)))
	}
	p.flows[client] = f
	p.wg.Add(1)
	go p.serverLoop(f)
	return f
}

// serverLoop reads what the server sends to one client and forwards it back.
func (p *Proxy) serverLoop(f *flow) {
	defer p.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, err := f.up.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ECONNREFUSED while the server is down: keep reading, it may come back.
			p.mu.Lock()
			closed := p.closed
			p.mu.Unlock()
			if closed {
				return
			}
			time.Sleep(time.Millisecond)
			continue
		}
		p.inject(f, ToClient, buf[:n])
	}
}
