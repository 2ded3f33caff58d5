// The state machine: Apply and the operations it applies (CONNECT, PING, TOUCH,
// DISCONNECT, LOCK, UPDATE, UNLOCK, UNLOCKALL, the end of an isolation). Sessions, the
// lock table, the released-id lists, the expiry heap and the fence limit are in files of
// their own.

package server

import (
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
)

// Command is one input of Machine.Apply. Key and Info may alias a receive buffer: the
// machine copies what it keeps.
type Command struct {
	Kind Kind
	// NewSession is the id a CONNECT's session gets if the machine creates one: drawn at
	// random by the loop (the machine reads no randomness), never 0.
	NewSession uint64
	// Peer is the far end of a CONNECT, kept with the session it creates (Machine.Peer);
	// the machine reads only Peer.Addr, for the per-address session cap.
	Peer *Peer
	// Admin: the sender may send UNLOCKALL (an admin key, or loopback without keys).
	Admin   bool
	Tag     int32  // opaque to the machine, copied into the Result (the loop: the index of the sender's address in its batch)
	Session uint64 // the datagram header's session; for KindIsolationDone the isolated session
	Floor   uint64 // the datagram header's ack floor
	ID      uint64 // request id; the nonce for KindConnect
	LockID  uint64 // UPDATE, UNLOCK
	TTLMs   uint32 // LOCK, UPDATE
	Key     []byte // LOCK, UPDATE, UNLOCK
	Info    []byte // CONNECT: IsolationInfo
}

// Result is one reply produced by Machine.Apply. A command draws at most one Result;
// commands that are dropped (below the ack floor, KindIsolationDone) draw none.
type Result struct {
	Op      wire.Op   // OpConnected, OpPong, OpOK, OpLocked, OpIsolated, OpDisconnected, OpError
	Code    wire.Code // OpError
	Tag     int32     // the command's Tag
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
	// BootCount is the high 32 bits of every session id.
	BootCount uint32
	// Caps (0: none), each with its refusal: MaxSessions and MaxSessionsPerAddr
	// TOO_MANY_SESSIONS, MaxLocksPerSession TOO_MANY_LOCKS, MaxLocks SERVER_FULL.
	MaxSessions        int
	MaxSessionsPerAddr int
	MaxLocksPerSession int
	MaxLocks           int
	// Isolate says an isolation command is configured: isolated sessions keep their keys
	// until KindIsolationDone. Without one, their locks are released at once.
	Isolate bool
	// FirstFence is the first fence to hand out.
	FirstFence uint64
}

// Machine is the deterministic lock state machine: a pure function of its state and of
// the inputs of Apply. It reads no clock, does no I/O and starts no goroutines, so it can
// be simulated in tests and later replicated through a consensus log.
//
// A Machine is not safe for concurrent use: one goroutine (the loop) owns it.
type Machine struct {
	cfg MachineConfig

	sessions   map[uint64]*session
	nonces     map[uint64]*session
	lruHead    *session
	lruTail    *session
	nextSess   uint32
	locks      map[string]*entry
	held       int
	free       int
	expiry     []*entry // min-heap by deadline
	fence      uint64   // next fence to hand out
	fenceEnd   uint64   // fences below fenceEnd may be handed out
	grants     uint64
	isolations uint64
	effects    []Isolation
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
		locks:    make(map[string]*entry),
		fence:    cfg.FirstFence,
		fenceEnd: cfg.FirstFence,
	}
}

// Apply advances the machine to now, then applies cmds in order. It appends one Result
// per answered command to out and one Isolation per session whose isolation command must
// run to iso, and returns both. now must not go backwards.
func (m *Machine) Apply(now int64, cmds []Command, out []Result, iso []Isolation) ([]Result, []Isolation) {
	m.effects = iso
	m.expireLocks(now)
	m.expireSessions(now)
	for i := range cmds {
		c := &cmds[i]
		if r, ok := m.apply(now, c); ok {
			r.Tag = c.Tag
			r.ID = c.ID
			out = append(out, r)
		}
	}
	if m.free > minFreeEntries && m.free > m.held {
		m.sweep()
	}
	iso, m.effects = m.effects, nil
	return out, iso
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
			m.releaseAll(s)
		}
		return Result{}, false
	}
	s := m.sessions[c.Session]
	if s == nil {
		return Result{Op: wire.OpDisconnected, Session: c.Session}, true
	}
	m.touch(s, now)
	if c.Floor > s.floor {
		s.floor = c.Floor
		s.pruneReleased()
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
	case KindUpdate:
		m.update(now, s, c, &r)
	case KindUnlock:
		m.unlock(s, c, &r)
	case KindUnlockAll:
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
		// A retransmitted CONNECT: the same session again.
		m.touch(s, now)
		return Result{Op: wire.OpConnected, Session: s.id}
	}
	m.nextSess++
	s := &session{
		id:    uint64(m.cfg.BootCount)<<32 | uint64(m.nextSess),
		nonce: c.ID,
		info:  string(c.Info),
		peer:  c.Peer,
	}
	m.sessions[s.id] = s
	m.nonces[s.nonce] = s
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

func (m *Machine) lock(now int64, s *session, c *Command, r *Result) {
	if len(c.Key) == 0 || c.ID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	if !m.checkTTL(c.TTLMs, r) {
		return
	}
	if done, how := s.hasReleased(c.ID); done {
		// A copy of a LOCK already answered: repeat a refusal, never grant it late to
		// a client that was told it holds nothing.
		switch how {
		case answeredLocked:
			r.Op = wire.OpLocked
		case answeredDelay:
			r.Op, r.Code = wire.OpError, wire.CodeLockDelay
		default:
			r.Op, r.Code = wire.OpError, wire.CodeStale
		}
		return
	}
	e := m.locks[string(c.Key)] // no allocation: the compiler does not copy for a lookup
	if e != nil && e.sess != nil {
		if e.sess == s && e.lockID == c.ID {
			r.Fence = e.fence // a retransmission of the grant
		} else {
			r.Op = wire.OpLocked
			s.addReleased(c.ID | answeredLocked)
		}
		return
	}
	// The loop may have failed to reserve fences: never hand out one that is not
	// durable. Either way the answer is final for this id.
	if now < m.cfg.LockDelayUntil || m.fence >= m.fenceEnd {
		r.Op, r.Code = wire.OpError, wire.CodeLockDelay
		s.addReleased(c.ID | answeredDelay)
		return
	}
	if e == nil {
		e = &entry{key: string(c.Key), heapIdx: -1}
		m.locks[e.key] = e
	} else {
		m.free--
	}
	e.sess, e.lockID, e.fence = s, c.ID, m.fence
	e.deadline = now + int64(c.TTLMs)*1e6
	m.fence++
	m.grants++
	m.held++
	s.link(e)
	m.heapPush(e)
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
	e.deadline = now + int64(c.TTLMs)*1e6
	m.heapFix(e)
	r.Fence = e.fence
}

func (m *Machine) unlock(s *session, c *Command, r *Result) {
	if len(c.Key) == 0 || c.LockID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	e := m.locks[string(c.Key)]
	if e == nil || e.sess != s || e.lockID != c.LockID {
		return // already gone: OK, and a newer holder is left alone
	}
	m.release(e)
	if c.LockID >= s.floor {
		s.addReleased(c.LockID)
	}
}

// unlockAll releases every lock and isolates every session that held one.
func (m *Machine) unlockAll() {
	for s := m.lruHead; s != nil; s = s.next {
		if s.nlocks == 0 {
			continue
		}
		m.isolate(s)
		m.releaseAll(s) // the operator asked: the keys are free now, isolation or not
	}
}

// isolate marks s isolated and, when a command is configured, asks the loop to run it.
// With a command, s keeps its keys (unavailable to others) until KindIsolationDone;
// without one they are released at once.
func (m *Machine) isolate(s *session) {
	if !s.isolated {
		s.isolated = true
		m.isolations++
		if m.cfg.Isolate {
			s.isolating = true
			m.effects = append(m.effects, Isolation{Session: s.id, Info: s.info})
		}
	}
	if s.isolating {
		// Its keys wait for the command, not for their deadlines.
		for e := s.locks; e != nil; e = e.next {
			m.heapRemove(e)
		}
		return
	}
	m.releaseAll(s)
}

// Read-only views, for the loop and for tests.

// Grants is how many locks have been granted.
func (m *Machine) Grants() uint64 { return m.grants }

// Isolations is how many sessions have been isolated.
func (m *Machine) Isolations() uint64 { return m.isolations }

// Idle tells that the machine has nothing that time alone could change: no session and
// no lock. The loop then needs no tick.
func (m *Machine) Idle() bool { return len(m.sessions) == 0 && m.held == 0 }
