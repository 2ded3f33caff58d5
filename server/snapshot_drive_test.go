package server

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// snapStep is one input of a machine: an Apply at now, or (limit not 0) a fence
// reservation instead.
type snapStep struct {
	now     int64
	limit   uint64
	cmds    []command
	senders []*simClient // who sent each command; nil for scripted ones
	// move, not 0: the network stage moves the session's far end to to (a keyed client
	// that changed address), instead of an Apply.
	move uint64
	to   netip.AddrPort
}

func (st *snapStep) apply(m *machine) ([]result, []isolation) {
	if st.limit != 0 {
		m.SetFenceLimit(st.limit)
		return nil, nil
	}
	if st.move != 0 {
		if p := m.peerInfo(st.move); p != nil {
			p.Addr = st.to // the original and its twin may share p: the same value twice
		}
		return nil, nil
	}
	return m.Apply(st.now, st.cmds, nil, nil)
}

// snapRun drives machines with a script, then with the simulation's command generator
// (nextCommand), telling its clients what the machine answered, as simulate does, so
// that their UPDATEs and UNLOCKs name real locks.
type snapRun struct {
	p       *prog
	rng     *rand.Rand
	now     int64
	script  []snapStep
	clients []*simClient
	peers   map[*simClient]*peerInfo // each client's far end, with a replay window of its own
	pending []uint64                 // sessions whose isolation command runs
	queued  map[[2]uint64]snapQueued // (session, id) answered QUEUED
}

type snapQueued struct {
	cl   *simClient
	keys []string
}

func newSnapRun(seed uint64) *snapRun {
	rng := rand.New(rand.NewPCG(seed, 0x5a95))
	program := make([]byte, 1<<14)
	for i := range program {
		program[i] = byte(rng.UintN(256))
	}
	return &snapRun{p: &prog{b: program}, rng: rng, now: 1000 * ms,
		peers: map[*simClient]*peerInfo{}, queued: map[[2]uint64]snapQueued{}}
}

// snapConfig draws a configuration as simulate does: with and without isolation
// command, session timeout, lock-delay, caps.
func (r *snapRun) snapConfig() machineConfig {
	flags, caps := r.p.byte(), r.p.byte()
	cfg := machineConfig{MaxTTL: 500 * ms, Isolate: flags&1 != 0}
	if flags&2 != 0 {
		cfg.SessionTimeout = 2000 * ms
	}
	if flags&4 != 0 {
		cfg.LockDelayUntil = 1300 * ms
	}
	if flags&8 != 0 {
		cfg.FirstFence = 1 << 40
	}
	if flags&16 != 0 {
		cfg.MaxLocksPerSession = 2 + int(caps&3)
	}
	if flags&32 != 0 {
		cfg.MaxWaitersPerKey = 1 + int(caps>>2&3)
	}
	if flags&64 != 0 {
		cfg.MaxSessionsPerAddr = 1 + int(caps>>4&3)
	}
	return cfg
}

// next returns the next step for m (the machine whose fence counter it reads).
func (r *snapRun) next(m *machine) snapStep {
	if len(r.script) > 0 {
		st := r.script[0]
		r.script = r.script[1:]
		r.now = st.now
		return st
	}
	p := r.p
	switch op := p.byte(); {
	case op < 40:
		r.now += int64(p.byte()%20) * ms
	case op < 50:
		r.now += int64(1+p.byte()%16) * 200 * ms
	case op < 58:
		return snapStep{now: r.now, limit: m.NextFence() + 1 + uint64(p.pick(16))}
	case op < 62 && len(r.clients) > 0:
		cl := r.clients[p.pick(len(r.clients))]
		if cl.session != 0 && m.peerInfo(cl.session) != nil {
			return snapStep{now: r.now, move: cl.session, to: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, 0, p.byte()}), 7)}
		}
	case op < 66 && len(r.pending) > 0:
		i := p.pick(len(r.pending))
		s := r.pending[i]
		r.pending = append(r.pending[:i], r.pending[i+1:]...)
		return snapStep{now: r.now, cmds: []command{{kind: kindIsolationDone, Session: s, Tag: -1}}, senders: []*simClient{nil}}
	default:
		st := snapStep{now: r.now}
		for j := 0; j < 1+p.pick(4); j++ {
			c, cl := nextCommand(p, &r.clients, int32(len(st.cmds)))
			if c.kind == kindConnect {
				c.peerInfo = r.peerFor(cl)
			}
			st.cmds, st.senders = append(st.cmds, c), append(st.senders, cl)
		}
		return st
	}
	return snapStep{now: r.now}
}

// peerFor gives each client a far end of its own, with a key, a nonce prefix and a
// replay window that has seen counters (simPeers are shared and have none).
func (r *snapRun) peerFor(cl *simClient) *peerInfo {
	if cl.peer == nil {
		return nil
	}
	if p := r.peers[cl]; p != nil {
		return p
	}
	p := &peerInfo{Addr: cl.peer.Addr, KeyID: byte(r.rng.UintN(4)), Admin: r.rng.UintN(2) == 0}
	for i := range p.Prefix {
		p.Prefix[i] = byte(r.rng.UintN(256))
	}
	base := r.rng.Uint64N(1 << 40)
	for range r.rng.IntN(60) {
		p.Window.Accept(base + r.rng.Uint64N(400))
	}
	r.peers[cl] = p
	return p
}

// learn tells the clients what the machine answered st.
func (r *snapRun) learn(st snapStep, out []result, iso []isolation) {
	for _, res := range out {
		if res.Tag < 0 {
			k := [2]uint64{res.Session, res.ID}
			if q, ok := r.queued[k]; ok {
				q.cl.learn(res.ID, q.keys)
				delete(r.queued, k)
			}
			continue
		}
		c, cl := st.cmds[res.Tag], st.senders[res.Tag]
		switch {
		case cl == nil:
		case c.kind == kindConnect && res.Op == wire.OpConnected:
			for _, o := range r.clients {
				if o.nonce == c.ID && o.session == 0 {
					o.session = res.Session
				}
			}
		case (c.kind == kindLock || c.kind == kindLockMany) && res.Op == wire.OpOK:
			cl.learn(res.ID, reqKeys(c))
		case res.Op == wire.OpQueued:
			r.queued[[2]uint64{res.Session, res.ID}] = snapQueued{cl, reqKeys(c)}
		}
	}
	for _, i := range iso {
		r.pending = append(r.pending, i.Session)
	}
}

// richRun scripts a machine into states with every part in use: keys stalled for want
// of fences; then 200 sessions with peers and released ids, held locks, waiters
// (LOCKMANY among them) with and without bounds, isolated and isolating sessions, an
// ended and a live session draining across Applies, and expiries left to later Applies.
// The random generator follows, with the scripted sessions among its clients. marks are
// the numbers of script steps after which those states are reached.
func richRun(seed uint64) (run *snapRun, cfg machineConfig, marks []int) {
	cfg = machineConfig{MaxTTL: int64(time.Minute), SessionTimeout: int64(15 * time.Second), Isolate: true}
	run = newSnapRun(seed)
	now := 1000 * ms
	var steps []snapStep
	add := func(cmds ...command) {
		steps = append(steps, snapStep{now: now, cmds: cmds, senders: make([]*simClient, len(cmds))})
	}
	const n, big = 200, applyBudget + 600
	var cmds []command
	for i := 1; i <= n+2; i++ {
		cl := &simClient{nonce: uint64(i), session: uint64(1000 + i), nextID: 100, floor: 1,
			peer: simPeers[i%len(simPeers)]}
		c := command{kind: kindConnect, ID: cl.nonce, NewSession: cl.session, Info: fmt.Appendf(nil, "host-%d", i)}
		c.peerInfo = run.peerFor(cl)
		cmds = append(cmds, c)
		if i <= n {
			run.clients = append(run.clients, cl)
		}
	}
	s := func(i int) uint64 { return uint64(1000 + i) }
	// No fence reserved yet: waiting LOCKs of free keys stall.
	cmds = append(cmds, waitCmd(s(70), 50, 60000, 0, "s"), manyCmd(s(71), 50, 60000, true, 0, "s2", "s3"))
	add(cmds...)
	marks = append(marks, len(steps))
	steps = append(steps, snapStep{now: now, limit: 1 << 30})
	cmds = nil
	for i := 1; i <= n+2; i++ {
		cl := &simClient{}
		if i <= n {
			cl = run.clients[i-1]
		}
		for j := 0; j < 3; j++ {
			key := fmt.Sprintf("k%d-%d", i, j)
			cmds = append(cmds, lockCmd(s(i), uint64(1+j), 60000, key))
			cl.learn(uint64(1+j), []string{key})
		}
	}
	add(cmds...)
	for i := 1; i <= 3; i++ { // keyed clients that moved
		steps = append(steps, snapStep{now: now, move: s(i), to: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 8, 0, byte(i)}), 9)})
	}
	add(lockCmd(s(1), 10, 60000, "a"), lockCmd(s(2), 10, 60000, "b"), lockCmd(s(3), 10, 60000, "c"),
		lockCmd(s(4), 10, 60000, "d"))
	cmds = nil
	for i := 5; i <= 40; i++ {
		switch i % 4 {
		case 0:
			cmds = append(cmds, waitCmd(s(i), 20, 60000, 0, "a"))
		case 1:
			cmds = append(cmds, waitCmd(s(i), 20, 60000, 9000, "a"))
		case 2:
			cmds = append(cmds, manyCmd(s(i), 20, 60000, true, 0, "a", "b"))
		default:
			cmds = append(cmds, manyCmd(s(i), 20, 60000, true, uint32(100*i), "c", "d", "b"))
		}
	}
	add(cmds...)
	cmds = nil
	for i := 41; i <= 60; i++ {
		cmds = append(cmds, unlockCmd(s(i), 30, 1, fmt.Sprintf("k%d-0", i)), lockCmd(s(i), 31, 60000, "a"),
			unlockCmd(s(i), 32, 77, "zz"), command{kind: kindTouch, Session: s(i), ID: 33, Floor: uint64(i % 2 * 31)})
	}
	add(cmds...)
	add(lockCmd(s(61), 40, 100, "e"), lockCmd(s(62), 40, 100, "f"))
	now += 200 * ms // 61 and 62 isolated, their isolation commands asked for
	add(command{kind: kindIsolationDone, Session: s(62)})
	cmds = nil
	for j := 0; j < big; j++ {
		cmds = append(cmds, lockCmd(s(n+1), uint64(1000+j), 500, fmt.Sprint("x", j)),
			lockCmd(s(n+2), uint64(1000+j), 60000, fmt.Sprint("y", j)))
	}
	add(cmds...)
	now += 600 * ms // n+1's locks expire, the budget leaves some; n+2 ends, left draining
	add(command{kind: kindDisconnect, Session: s(n + 2), ID: 4})
	marks = append(marks, len(steps))
	add(command{kind: kindIsolationDone, Session: s(n + 1)}) // n+1 drains behind n+2
	marks = append(marks, len(steps))
	run.pending = []uint64{s(61)}

	run.script = steps
	return run, cfg, marks
}
