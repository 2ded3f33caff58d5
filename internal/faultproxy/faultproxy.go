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
	"container/heap"
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

// inject applies the faults of direction d to b and forwards it. Called only by the
// direction's reading goroutine of f; b is reused by the caller after return.
func (p *Proxy) inject(f *flow, d Direction, b []byte) {
	st := &p.stats[d]
	st.received.Add(1)
	p.mu.Lock()
	fl := p.faults[d]
	p.mu.Unlock()
	fd := &f.dir[d]
	rng := fd.rng
	// Draw every decision, used or not, so that one datagram always takes the same
	// number of draws and the sequence stays aligned under any configuration change.
	rDrop, rCorrupt, rDup, rDelay, rReorder := rng.Float64(), rng.Float64(), rng.Float64(), rng.Float64(), rng.Float64()
	dupDelay, delay := rng.Float64(), rng.Float64()
	bits := rng.Uint64()
	switch {
	case fl.Blackhole:
		st.blackholed.Add(1)
		p.releaseHeld(f, d)
		return
	case rDrop < fl.Drop:
		st.dropped.Add(1)
		p.releaseHeld(f, d)
		return
	}
	pkt := append([]byte(nil), b...)
	if rCorrupt < fl.Corrupt && len(pkt) > 0 {
		st.corrupted.Add(1)
		nflip := 1 + int(bits%3)
		bits /= 3
		for i := 0; i < nflip; i++ {
			pos := int(bits % uint64(len(pkt)*8))
			bits = bits*0x9e3779b97f4a7c15 + 1
			pkt[pos/8] ^= 1 << (pos % 8)
		}
	}
	it := &item{f: f, d: d, b: pkt}
	now := time.Now()
	if rDup < fl.Duplicate {
		st.duplicated.Add(1)
		cp := &item{f: f, d: d, b: pkt}
		p.sched.add(cp, now.Add(time.Duration(dupDelay*float64(fl.MaxDelay))))
	}
	switch {
	case rDelay < fl.Delay && fl.MaxDelay > 0:
		st.delayed.Add(1)
		p.sched.add(it, now.Add(time.Duration(delay*float64(fl.MaxDelay))))
	case rReorder < fl.Reorder:
		// Hold it until the flow's next datagram has left, or the window ends.
		st.reordered.Add(1)
		fd.heldMu.Lock()
		prev := fd.held
		fd.held = it
		fd.heldMu.Unlock()
		if prev != nil {
			p.send(prev)
		}
		p.sched.add(it, now.Add(fl.reorderWindow()))
	default:
		p.send(it)
		p.releaseHeld(f, d)
	}
}

// releaseHeld sends the datagram held for reordering in direction d of f, if any: a
// successor went by (or was lost in its place).
func (p *Proxy) releaseHeld(f *flow, d Direction) {
	fd := &f.dir[d]
	fd.heldMu.Lock()
	held := fd.held
	fd.held = nil
	fd.heldMu.Unlock()
	if held != nil {
		p.send(held)
	}
}

// send writes it out once: an item is sent by whoever claims it first (the reorder
// release or the scheduler).
func (p *Proxy) send(it *item) {
	if !it.sent.CompareAndSwap(false, true) {
		return
	}
	st := &p.stats[it.d]
	var err error
	if it.d == ToServer {
		_, err = it.f.up.Write(it.b)
	} else {
		_, err = p.listen.WriteToUDPAddrPort(it.b, it.f.client)
	}
	if err != nil {
		st.sendErrors.Add(1)
		return
	}
	st.forwarded.Add(1)
}

// The scheduler delivers delayed datagrams at their time.

type item struct {
	f    *flow
	d    Direction
	b    []byte
	due  time.Time
	sent atomic.Bool
}

type itemHeap []*item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h itemHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)        { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

type scheduler struct {
	mu      sync.Mutex
	h       itemHeap
	wake    chan struct{}
	done    chan struct{}
	stopped bool
}

func (s *scheduler) init() {
	s.wake = make(chan struct{}, 1)
	s.done = make(chan struct{})
}

func (s *scheduler) add(it *item, due time.Time) {
	it.due = due
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	heap.Push(&s.h, it)
	first := s.h[0] == it
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *scheduler) stop() {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.done)
	}
	s.h = nil
	s.mu.Unlock()
}

func (p *Proxy) schedLoop() {
	defer p.wg.Done()
	s := &p.sched
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		var due []*item
		now := time.Now()
		for len(s.h) > 0 && !s.h[0].due.After(now) {
			due = append(due, heap.Pop(&s.h).(*item))
		}
		wait := time.Hour
		if len(s.h) > 0 {
			wait = s.h[0].due.Sub(now)
		}
		s.mu.Unlock()
		for _, it := range due {
			fd := &it.f.dir[it.d]
			fd.heldMu.Lock()
			if fd.held == it {
				fd.held = nil // its window ended without a successor
			}
			fd.heldMu.Unlock()
			p.send(it)
		}
		timer.Reset(wait)
		select {
		case <-s.done:
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}
