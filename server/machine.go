// The state machine: Apply, its dispatch, CONNECT and the end of an isolation. Its inputs
// and outputs (commands_machine.go), the lock operations (operations.go), LOCKMANY,
// sessions, the lock table, the wait queues and their bounds, the released-id sets, the
// expiry heap and the fence limit are in files of their own.

package server

import (
	"math"
	"net/netip"

	"github.com/netmutex/netmutex/internal/wire"
)

// Rebuilds counts the tables rebuilt after floods: the loop returns memory after one.
func (m *machine) Rebuilds() int { return m.rebuilds }

// machine is the deterministic lock state machine: a pure function of its state and of
// the inputs of Apply. It reads no clock, does no I/O and starts no goroutines, so it can
// be simulated in tests and later replicated through a consensus log.
//
// A Machine is not safe for concurrent use: one goroutine (the loop) owns it.
type machine struct {
	cfg machineConfig

	sessions   map[uint64]*session
	nonces     map[uint64]*session
	perAddr    map[netip.Addr]int // sessions per IP address
	lruHead    *session
	lruTail    *session
	holders    *session // sessions holding locks
	drainHead  *session // released sessions whose entries are not all freed yet
	drainTail  *session
	locks      map[string]*entry
	held       int // keys held (entries of draining sessions excluded)
	free       int
	expiry     []*entry // min-heap by deadline
	leafPool   leafPool
	budget     int // work left to this Apply (applyBudget)
	work       int // work done by the last Apply beyond its commands, for tests
	sessPeak   int
	locksPeak  int
	rebuilds   int    // tables rebuilt after a flood, for tests
	fence      uint64 // next fence to hand out
	fenceEnd   uint64 // fences below fenceEnd may be handed out
	grants     uint64
	isolations uint64
	ended      uint64 // sessions ended (DISCONNECT, timeout)
	effects    []isolation
	pushed     []result // grants pushed by the running step, moved to Apply's out after it

	// Waiting: see waiters.go.
	waiters   map[waitKey]*waiter
	bounds    []*waiter // min-heap by (bound, seq)
	handQ     []*entry  // keys to hand on at the end of the step (settle)
	stallHead *entry    // free keys whose head waits for the lock-delay's end or fences
	stallTail *entry
	nstalled  int
	waitKeys  int       // keys of all waiters: they count as held against MaxLocks
	wseq      uint64    // waiters enqueued so far
	due       []dueLock // expireLocks' scratch
	es        [wire.MaxManyKeys]*entry
	manyKeys  [wire.MaxManyKeys][]byte
}

// newMachine returns an empty machine. It hands out no fence until SetFenceLimit.
func newMachine(cfg machineConfig) *machine {
	if cfg.FirstFence == 0 {
		cfg.FirstFence = 1
	}
	return &machine{
		cfg:      cfg,
		sessions: make(map[uint64]*session),
		nonces:   make(map[uint64]*session),
		perAddr:  make(map[netip.Addr]int),
		locks:    make(map[string]*entry),
		waiters:  make(map[waitKey]*waiter),
		fence:    cfg.FirstFence,
		fenceEnd: cfg.FirstFence,
	}
}

// Apply advances the machine to now, then applies cmds in order. It appends one Result
// per answered command to out and one Isolation per session whose isolation command must
// run to iso, and returns both. now must not go backwards.
//
// Grants to waiters are appended to out where they happen, as pushed Results (Tag -1):
// after each step (an expiry, a bound, a timeout, a command), the keys it freed are
// handed on (settle).
func (m *machine) Apply(now int64, cmds []command, out []result, iso []isolation) ([]result, []isolation) {
	m.effects = iso
	m.budget = applyBudget
	m.expireLocks(now)
	m.expireWaiters(now)
	m.drain()
	m.settle(now)
	m.expireSessions(now)
	m.unstall(now)
	out = m.takePushed(out)
	for i := range cmds {
		c := &cmds[i]
		r, ok := m.apply(now, c)
		if len(m.pushed) > 0 {
			out = m.takePushed(out) // pushed while the command was applied: before its answer
		}
		if ok {
			r.Tag = c.Tag
			r.ID = c.ID
			out = append(out, r)
		}
		if len(m.handQ) > 0 {
			m.settle(now)
			out = m.takePushed(out)
		}
	}
	m.drain()
	m.settle(now)
	out = m.takePushed(out)
	if m.free > minFreeEntries && m.free > m.held {
		m.sweep()
	}
	m.shrink()
	m.work = applyBudget - m.budget
	iso, m.effects = m.effects, nil
	return out, iso
}

// takePushed appends the grants pushed so far to out. The Machine keeps them apart
// (rather than appending to out as it goes) so that the hot path of Apply appends its
// answers to a local slice: a slice kept in the Machine costs a write barrier per append.
func (m *machine) takePushed(out []result) []result {
	if len(m.pushed) == 0 {
		return out
	}
	out = append(out, m.pushed...)
	clear(m.pushed)
	m.pushed = m.pushed[:0]
	return out
}

func (m *machine) apply(now int64, c *command) (result, bool) {
	switch c.kind {
	case kindConnect:
		return m.connect(now, c), true
	case kindPing:
		return result{Op: wire.OpPong, Session: c.Session}, true
	case kindIsolationDone:
		if s := m.sessions[c.Session]; s != nil && s.isolating {
			s.isolating = false
			m.beginRelease(s)
		}
		return result{}, false
	}
	s := m.sessions[c.Session]
	if s != nil && m.timedOut(s, now) {
		m.timeout(s, now) // left over by the budget: as if done before the commands
		m.settle(now)
		s = m.sessions[c.Session]
	}
	if s == nil {
		return result{Op: wire.OpDisconnected, Session: c.Session}, true
	}
	m.touch(s, now)
	if c.Floor > s.floor {
		s.floor = c.Floor
		s.released.pruneBelow(s.floor, &m.leafPool)
	}
	if c.ID < s.floor {
		return result{}, false
	}
	r := result{Op: wire.OpOK, Session: s.id}
	if s.isolated {
		r.Op = wire.OpIsolated
		return r, true
	}
	switch c.kind {
	case kindTouch:
		r.Op = wire.OpPong // an empty acknowledgement: never larger than the request
	case kindDisconnect:
		m.deleteSession(s)
		r.Op = wire.OpDisconnected
	case kindLock:
		m.lock(now, s, c, &r)
	case kindLockMany:
		m.lockMany(now, s, c, &r)
	case kindUpdate:
		m.update(now, s, c, &r)
	case kindUnlock:
		m.unlock(now, s, c, &r)
	case kindUnlockAll:
		if !c.Admin {
			r.Op, r.Code = wire.OpError, wire.CodeForbidden
			break
		}
		m.unlockAll()
		r.Op = wire.OpPong
	default:
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
	}
	return r, true
}

func (m *machine) connect(now int64, c *command) result {
	if c.ID == 0 {
		return result{Op: wire.OpError, Code: wire.CodeBadRequest, Session: c.Session}
	}
	if len(c.Info) > wire.MaxIsolationInfo {
		return result{Op: wire.OpError, Code: wire.CodeBadIsolationInfo, Session: c.Session}
	}
	if s := m.nonces[c.ID]; s != nil {
		if !s.peer.sameSender(c.peerInfo) {
			// A nonce seen on the network, sent from elsewhere: it must not fetch (or
			// keep alive) the session of the CONNECT that chose it.
			return result{Op: wire.OpError, Code: wire.CodeBadRequest, Session: c.Session}
		}
		// A retransmitted CONNECT: the same session again.
		m.touch(s, now)
		return result{Op: wire.OpConnected, Session: s.id}
	}
	full := result{Op: wire.OpError, Code: wire.CodeTooManySessions, Session: c.Session}
	if max := m.cfg.MaxSessions; max > 0 && len(m.sessions) >= max {
		return full
	}
	var addr netip.Addr
	if c.peerInfo != nil {
		addr = c.peerInfo.Addr.Addr().Unmap()
		if max := m.cfg.MaxSessionsPerAddr; max > 0 && m.perAddr[addr] >= max {
			return full
		}
	}
	// The loop's random id; on 0 or a live id (a loop that drew badly, or a replay of
	// its draws), the next free one. Never a live one, whatever the draws.
	id := c.NewSession
	for id == 0 || m.sessions[id] != nil {
		id++
	}
	s := &session{
		id:    id,
		nonce: c.ID,
		info:  string(c.Info),
		peer:  c.peerInfo,
		addr:  addr,
	}
	m.sessions[s.id] = s
	m.nonces[s.nonce] = s
	if addr.IsValid() {
		m.perAddr[addr]++
	}
	m.sessPeak = max(m.sessPeak, len(m.sessions))
	s.lastSeen = now
	m.lruPush(s)
	return result{Op: wire.OpConnected, Session: s.id}
}

// Read-only views, for the loop and for tests.

// Grants is how many locks have been granted.
func (m *machine) Grants() uint64 { return m.grants }

// Isolations is how many sessions have been isolated.
func (m *machine) Isolations() uint64 { return m.isolations }

// Idle tells that the machine has nothing that time alone could change: no session and
// no lock. The loop then needs no tick.
func (m *machine) Idle() bool {
	return len(m.sessions) == 0 && m.held == 0 && m.drainHead == nil && len(m.expiry) == 0
}

// NextDue is the earliest time at which time alone changes the machine: a lease, a
// wait bound or the oldest session's time-out running out; math.MinInt64 when work is
// waiting now (a drain or hand-on the budget left over, a stalled grant), and
// math.MaxInt64 when nothing waits on time. An Apply of only the time, before then,
// changes nothing.
func (m *machine) NextDue() int64 {
	if m.drainHead != nil || len(m.handQ) > 0 || m.stallHead != nil {
		return math.MinInt64
	}
	due := int64(math.MaxInt64)
	if len(m.expiry) > 0 {
		due = min(due, m.expiry[0].deadline)
	}
	if len(m.bounds) > 0 {
		due = min(due, m.bounds[0].bound)
	}
	if m.lruHead != nil && m.cfg.SessionTimeout > 0 {
		due = min(due, m.lruHead.lastSeen+m.cfg.SessionTimeout)
	}
	return due
}
