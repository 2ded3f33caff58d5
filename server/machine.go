// The state machine: Apply and the operations it applies (CONNECT, PING, TOUCH,
// DISCONNECT, LOCK, UPDATE, UNLOCK, UNLOCKALL, the end of an isolation). LOCKMANY,
// sessions, the lock table, the wait queues, the released-id lists, the expiry heap and
// the fence limit are in files of their own.

package server

import (
	"net/netip"

	"github.com/netmutex/netmutex/internal/wire"
)

// Kind is the kind of a Command given to Machine.Apply.
type Kind uint8

// Command kinds. The first ones mirror the request opcodes of docs/PROTOCOL.md;
// KindIsolationDone is the loop telling the machine that a session's isolation command
// has finished (or was given up on).
const (
	KindConnect Kind = iota + 1
	KindPing
	KindTouch
	KindDisconnect
	KindLock
	KindUpdate
	KindUnlock
	KindUnlockAll
	KindIsolationDone
	KindLockMany
)

// Command is one input of Machine.Apply. Key and Info may alias a receive buffer: the
// machine copies what it keeps.
type Command struct {
	Kind Kind
	// Admin: the sender may send UNLOCKALL (an admin key, or loopback without keys).
	Admin bool
	// LOCK, LOCKMANY: wait in the keys' queues (wire.LockWait) for at most WaitMs
	// milliseconds (0: no bound but the session's life).
	Wait     bool
	KeyCount uint8 // LOCKMANY: the number of keys in Key
	Tag      int32 // opaque to the machine, copied into the Result (the loop: the index of the sender's address in its batch)
	// NewSession is the id a CONNECT's session gets if the machine creates one: drawn at
	// random by the loop (the machine reads no randomness), never 0.
	NewSession uint64
	// Peer is the far end of a CONNECT, kept with the session it creates (Machine.Peer);
	// the machine reads only Peer.Addr, for the per-address session cap.
	Peer    *Peer
	Session uint64 // the datagram header's session; for KindIsolationDone the isolated session
	Floor   uint64 // the datagram header's ack floor
	ID      uint64 // request id; the nonce for KindConnect
	LockID  uint64 // UPDATE, UNLOCK
	TTLMs   uint32 // LOCK, LOCKMANY, UPDATE
	WaitMs  uint32 // LOCK, LOCKMANY with Wait
	// Key: LOCK, UPDATE, UNLOCK; for LOCKMANY its KeyCount keys as on the wire, each a u8
	// length and its bytes (read with wire.NextKey).
	Key  []byte
	Info []byte // CONNECT: IsolationInfo
}

// Result is one reply produced by Machine.Apply. A command draws at most one Result;
// commands that are dropped (below the ack floor, KindIsolationDone) draw none. A grant
// to a waiter is a pushed Result: Op OpOK, Tag -1, the waiter's Session, its LOCK's ID
// and the grant's Fence (of the first key for LOCKMANY); the network stage sends it to
// the session's address (Machine.Peer) unasked.
type Result struct {
	Op      wire.Op   // OpConnected, OpPong, OpOK, OpQueued, OpLocked, OpIsolated, OpDisconnected, OpError
	Code    wire.Code // OpError
	Tag     int32     // the command's Tag; -1 for a pushed grant
	Session uint64    // the session the reply belongs to (the new one for OpConnected)
	ID      uint64    // the request id answered
	Fence   uint64    // OpOK
}

// Isolation tells the loop to run the isolation command for a session.
type Isolation struct {
	Session uint64
	Info    string
}

// MachineConfig fixes the limits of a Machine. Times are nanoseconds in the time base of
// the now values given to Apply.
type MachineConfig struct {
	MaxTTL int64
	// SessionTimeout closes silent sessions; 0 means never.
	SessionTimeout int64
	// LockDelayUntil: LOCK answers LOCK_DELAY while now < LockDelayUntil.
	LockDelayUntil int64
	// Caps (0: none), each with its refusal: MaxSessions and MaxSessionsPerAddr
	// TOO_MANY_SESSIONS, MaxLocksPerSession TOO_MANY_LOCKS, MaxLocks SERVER_FULL.
	MaxSessions        int
	MaxSessionsPerAddr int
	MaxLocksPerSession int
	MaxLocks           int
	// Waiter caps (0: none), refused TOO_MANY_WAITERS: waiters in one key's queue, and
	// waiting requests of one session. The keys a session waits for count as held against
	// MaxLocksPerSession and MaxLocks, so a grant to a waiter never exceeds those caps and
	// all the waiters of the server take at most MaxLocks keys' worth of memory.
	MaxWaitersPerKey     int
	MaxWaitersPerSession int
	// Isolate says an isolation command is configured: isolated sessions keep their keys
	// until KindIsolationDone. Without one, their locks are released at once.
	Isolate bool
	// FirstFence is the first fence to hand out.
	FirstFence uint64
}

// Rebuilds counts the tables rebuilt after floods: the loop returns memory after one.
func (m *Machine) Rebuilds() int { return m.rebuilds }

// Machine is the deterministic lock state machine: a pure function of its state and of
// the inputs of Apply. It reads no clock, does no I/O and starts no goroutines, so it can
// be simulated in tests and later replicated through a consensus log.
//
// A Machine is not safe for concurrent use: one goroutine (the loop) owns it.
type Machine struct {
	cfg MachineConfig

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
	effects    []Isolation
	pushed     []Result // grants pushed by the running step, moved to Apply's out after it

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

// NewMachine returns an empty machine. It hands out no fence until SetFenceLimit.
func NewMachine(cfg MachineConfig) *Machine {
	if cfg.FirstFence == 0 {
		cfg.FirstFence = 1
	}
	return &Machine{
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
func (m *Machine) Apply(now int64, cmds []Command, out []Result, iso []Isolation) ([]Result, []Isolation) {
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
func (m *Machine) takePushed(out []Result) []Result {
	if len(m.pushed) == 0 {
		return out
	}
	out = append(out, m.pushed...)
	clear(m.pushed)
	m.pushed = m.pushed[:0]
	return out
}

func (m *Machine) apply(now int64, c *Command) (Result, bool) {
	switch c.Kind {
	case KindConnect:
		return m.connect(now, c), true
	case KindPing:
		return Result{Op: wire.OpPong, Session: c.Session}, true
	case KindIsolationDone:
		if s := m.sessions[c.Session]; s != nil && s.isolating {
			s.isolating = false
			m.beginRelease(s)
		}
		return Result{}, false
	}
	s := m.sessions[c.Session]
	if s != nil && m.timedOut(s, now) {
		m.timeout(s, now) // left over by the budget: as if done before the commands
		m.settle(now)
		s = m.sessions[c.Session]
	}
	if s == nil {
		return Result{Op: wire.OpDisconnected, Session: c.Session}, true
	}
	m.touch(s, now)
	if c.Floor > s.floor {
		s.floor = c.Floor
		s.released.pruneBelow(s.floor, &m.leafPool)
	}
	if c.ID < s.floor {
		return Result{}, false
	}
	r := Result{Op: wire.OpOK, Session: s.id}
	if s.isolated {
		r.Op = wire.OpIsolated
		return r, true
	}
	switch c.Kind {
	case KindTouch:
		r.Op = wire.OpPong // an empty acknowledgement: never larger than the request
	case KindDisconnect:
		m.deleteSession(s)
		r.Op = wire.OpDisconnected
	case KindLock:
		m.lock(now, s, c, &r)
	case KindLockMany:
		m.lockMany(now, s, c, &r)
	case KindUpdate:
		m.update(now, s, c, &r)
	case KindUnlock:
		m.unlock(now, s, c, &r)
	case KindUnlockAll:
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

func (m *Machine) connect(now int64, c *Command) Result {
	if c.ID == 0 {
		return Result{Op: wire.OpError, Code: wire.CodeBadRequest, Session: c.Session}
	}
	if len(c.Info) > wire.MaxIsolationInfo {
		return Result{Op: wire.OpError, Code: wire.CodeBadIsolationInfo, Session: c.Session}
	}
	if s := m.nonces[c.ID]; s != nil {
		if !s.peer.sameSender(c.Peer) {
			// A nonce seen on the network, sent from elsewhere: it must not fetch (or
			// keep alive) the session of the CONNECT that chose it.
			return Result{Op: wire.OpError, Code: wire.CodeBadRequest, Session: c.Session}
		}
		// A retransmitted CONNECT: the same session again.
		m.touch(s, now)
		return Result{Op: wire.OpConnected, Session: s.id}
	}
	full := Result{Op: wire.OpError, Code: wire.CodeTooManySessions, Session: c.Session}
	if max := m.cfg.MaxSessions; max > 0 && len(m.sessions) >= max {
		return full
	}
	var addr netip.Addr
	if c.Peer != nil {
		addr = c.Peer.Addr.Addr().Unmap()
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
		peer:  c.Peer,
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
	return Result{Op: wire.OpConnected, Session: s.id}
}

// checkTTL sets r to the TTL error of ttl, if any.
func (m *Machine) checkTTL(ttl uint32, r *Result) bool {
	switch {
	case ttl == 0:
		r.Op, r.Code = wire.OpError, wire.CodeBadTTL
	case int64(ttl)*1e6 > m.cfg.MaxTTL:
		r.Op, r.Code = wire.OpError, wire.CodeTTLTooLong
	default:
		return true
	}
	return false
}

// answered sets r to the final answer already given to LOCK or LOCKMANY id of s, if
// any: a copy then gets it again, never a late grant to a client told it holds nothing.
func (m *Machine) answered(s *session, id uint64, r *Result) bool {
	how, done := s.released.get(id)
	if !done {
		return false
	}
	setAnswer(how, r)
	return true
}

// setAnswer sets r to the final answer how.
func setAnswer(how uint8, r *Result) {
	switch how {
	case answeredLocked:
		r.Op = wire.OpLocked
	case answeredDelay:
		r.Op, r.Code = wire.OpError, wire.CodeLockDelay
	case answeredTooMany:
		r.Op, r.Code = wire.OpError, wire.CodeTooManyLocks
	case answeredFull:
		r.Op, r.Code = wire.OpError, wire.CodeServerFull
	case answeredTooManyWaiters:
		r.Op, r.Code = wire.OpError, wire.CodeTooManyWaiters
	default:
		r.Op, r.Code = wire.OpError, wire.CodeStale
	}
}

// current brings e up to date before s's request looks at it: an expiry the budget left
// is done (false, r ISOLATED, if that isolated s), and an entry of a released session
// is freed (it was free already; its entry was waiting for the budget).
func (m *Machine) current(e *entry, s *session, now int64, r *Result) bool {
	if overdue(e, now) {
		m.expire(e)
		m.settle(now)
		if s.isolated {
			r.Op = wire.OpIsolated
			return false
		}
	}
	if e.sess != nil && e.sess.draining {
		m.freeEntry(e)
	}
	return true
}

func (m *Machine) lock(now int64, s *session, c *Command, r *Result) {
	if len(c.Key) == 0 || c.ID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	if !m.checkTTL(c.TTLMs, r) {
		return
	}
	if how, done := s.released.get(c.ID); done {
		setAnswer(how, r)
		return
	}
	if m.waiterOf(s, c.ID) != nil {
		r.Op = wire.OpQueued // a copy of a queued LOCK
		return
	}
	e := m.locks[string(c.Key)] // no allocation: the compiler does not copy for a lookup
	if e != nil && e.sess != nil && (e.sess.draining || overdue(e, now)) && !m.current(e, s, now, r) {
		return
	}
	if e != nil && e.sess == s && e.lockID == c.ID {
		r.Fence = e.fence // a retransmission of the grant
		return
	}
	if e != nil && (e.sess != nil || e.qhead != nil) {
		// Held, or waiters first.
		if !c.Wait {
			r.Op = wire.OpLocked
			s.released.add(c.ID, answeredLocked, &m.leafPool)
			return
		}
		m.es[0] = e
		if m.mayHold(s, c.ID, 1, r) && m.waiterRoom(s, c.ID, m.es[:1], r) {
			m.enqueue(now, s, c, m.es[:1])
			r.Op = wire.OpQueued
		}
		return
	}
	// Caps. Each refusal is final for this id, like LOCKED (see answeredTooMany).
	if m.overCap(s, 1) && !m.mayHold(s, c.ID, 1, r) {
		return
	}
	// The loop may have failed to reserve fences: never hand out one that is not
	// durable. Either way the answer is final for this id; a waiting LOCK waits.
	if now < m.cfg.LockDelayUntil || m.fence >= m.fenceEnd {
		if !c.Wait {
			r.Op, r.Code = wire.OpError, wire.CodeLockDelay
			s.released.add(c.ID, answeredDelay, &m.leafPool)
			return
		}
		m.es[0] = e
		if m.waiterRoom(s, c.ID, m.es[:1], r) {
			m.es[0] = m.entryFor(c.Key)
			m.enqueue(now, s, c, m.es[:1])
			r.Op = wire.OpQueued
		}
		return
	}
	if e == nil {
		e = &entry{key: string(c.Key), heapIdx: -1}
		m.locks[e.key] = e
		m.locksPeak = max(m.locksPeak, len(m.locks))
	} else {
		m.free--
	}
	e.sess, e.lockID, e.fence = s, c.ID, m.fence
	e.deadline = now + int64(c.TTLMs)*1e6
	m.fence++
	m.grants++
	m.grant(s, e)
	r.Fence = e.fence
}

func (m *Machine) update(now int64, s *session, c *Command, r *Result) {
	if len(c.Key) == 0 || c.LockID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	if !m.checkTTL(c.TTLMs, r) {
		return
	}
	e := m.locks[string(c.Key)]
	if e == nil || e.sess != s || e.lockID != c.LockID {
		r.Op, r.Code = wire.OpError, wire.CodeNotHeld
		return
	}
	if overdue(e, now) {
		m.expire(e) // too late to renew: the expiry the budget had left
		r.Op = wire.OpIsolated
		return
	}
	e.deadline = now + int64(c.TTLMs)*1e6
	m.heapFix(e)
	r.Fence = e.fence
}

func (m *Machine) unlock(now int64, s *session, c *Command, r *Result) {
	if len(c.Key) == 0 || c.LockID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	if w := m.waiterOf(s, c.LockID); w != nil {
		m.giveUp(w) // a queued LOCK cancelled, whichever key it names: it leaves the queue, answered for good
		return
	}
	e := m.locks[string(c.Key)]
	if e == nil || e.sess != s || e.lockID != c.LockID {
		// Already gone: OK, and a newer holder is left alone. Or not there yet: an
		// UNLOCK that overtook its LOCK (the client gave up on it). Either way a copy
		// of the LOCK arriving later is not to be queued or granted.
		if c.LockID >= s.floor {
			s.released.add(c.LockID, answeredLocked, &m.leafPool)
		}
		return
	}
	if overdue(e, now) {
		m.expire(e) // released too late: the expiry the budget had left
		r.Op = wire.OpIsolated
		return
	}
	m.release(e)
	if c.LockID >= s.floor {
		s.released.add(c.LockID, answeredReleased, &m.leafPool)
	}
}

// unlockAll releases every lock and isolates every session that held one: O(sessions
// holding locks, their waiters and their keys with waiters), the other entries freed by
// drain. The holders are all isolated (their waiters leave the queues) before any key is
// released, and the keys are handed on after the command (settle), so no holder is
// granted a key by the UNLOCKALL that isolates it.
func (m *Machine) unlockAll() {
	first := m.holders
	for s := first; s != nil; s = s.hnext {
		m.markIsolated(s)
	}
	for s := first; s != nil; {
		next := s.hnext
		m.beginRelease(s) // the operator asked: the keys are free now, isolation or not
		s = next
	}
}

// isolate marks s isolated and, when a command is configured, asks the loop to run it.
// With a command, s keeps its keys (unavailable to others) until KindIsolationDone: its
// entries stay in the expiry heap and leave it at their deadlines doing nothing else.
// Without one they are released at once.
func (m *Machine) isolate(s *session) {
	m.markIsolated(s)
	if !s.isolating {
		m.beginRelease(s)
	}
}

// markIsolated marks s isolated, asks for its isolation command and takes its waiters
// out of the queues.
func (m *Machine) markIsolated(s *session) {
	if s.isolated {
		return
	}
	s.isolated = true
	m.isolations++
	if m.cfg.Isolate {
		s.isolating = true
		m.effects = append(m.effects, Isolation{Session: s.id, Info: s.info})
	}
	m.dropWaiters(s)
}

// Read-only views, for the loop and for tests.

// Grants is how many locks have been granted.
func (m *Machine) Grants() uint64 { return m.grants }

// Isolations is how many sessions have been isolated.
func (m *Machine) Isolations() uint64 { return m.isolations }

// Idle tells that the machine has nothing that time alone could change: no session and
// no lock. The loop then needs no tick.
func (m *Machine) Idle() bool {
	return len(m.sessions) == 0 && m.held == 0 && m.drainHead == nil && len(m.expiry) == 0
}
