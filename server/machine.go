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
	Kind    Kind
	Tag     int32  // opaque to the machine, copied into the Result (the loop's datagram index)
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
	// Isolate says an isolation command is configured: isolated sessions keep their keys
	// until KindIsolationDone. Without one, their locks are released at once.
	Isolate bool
	// FirstFence is the first fence to hand out.
	FirstFence uint64
}

// Tuning constants.
const (
	// maxReleased bounds the released-lock-id list of one session, so that a client whose
	// ack floor is held back (a request retransmitted for seconds while thousands of
	// others complete) cannot grow server memory without bound. Past it the oldest
	// quarter is forgotten, without moving the floor: the pending request that holds the
	// floor back must still be served. A copy of a forgotten LOCK arriving later still
	// would be granted to a client that no longer waits for it; the lock then expires
	// and isolates that client — a loss of liveness, never of mutual exclusion — and
	// only after 2^18 releases by one session during one copy's flight.
	maxReleased = 1 << 18
	// minFreeEntries is how many free lock-table entries are always kept for reuse, so a
	// working set of keys locked again and again never allocates; beyond it, free entries
	// are swept once they outnumber the held ones (amortised O(1) per release).
	minFreeEntries = 1 << 14
)

// entry is one key of the lock table. A free entry (sess == nil) stays in the map for
// reuse until swept.
type entry struct {
	key      string
	sess     *session
	lockID   uint64
	fence    uint64
	deadline int64
	heapIdx  int // index in Machine.expiry, -1 when not in it
	// The session's list of held entries.
	prev, next *entry
}

type session struct {
	id        uint64
	nonce     uint64
	info      string
	lastSeen  int64
	floor     uint64
	isolated  bool // every request gets ISOLATED
	isolating bool // its isolation command runs; its keys stay held until it ends
	released  []uint64
	nlocks    int
	locks     *entry // head of the held entries
	// LRU list ordered by lastSeen, oldest first.
	prev, next *session
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

// FencesLeft is how many fences can be handed out before SetFenceLimit must be called
// again. The loop makes sure it is at least the number of commands of a batch (each
// command grants at most one fence) before Apply.
func (m *Machine) FencesLeft() uint64 { return m.fenceEnd - m.fence }

// NextFence is the fence the next grant gets.
func (m *Machine) NextFence() uint64 { return m.fence }

// SetFenceLimit allows fences below end to be handed out. The caller has made end
// durable first. It never lowers the limit.
func (m *Machine) SetFenceLimit(end uint64) {
	if end > m.fenceEnd {
		m.fenceEnd = end
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

func (m *Machine) expireLocks(now int64) {
	for len(m.expiry) > 0 && m.expiry[0].deadline <= now {
		e := m.expiry[0]
		m.heapRemove(e)
		m.isolate(e.sess)
	}
}

// expireSessions closes sessions silent for SessionTimeout. One that holds locks is
// isolated instead, and one whose isolation command still runs waits for it; both are
// looked at again one timeout later.
func (m *Machine) expireSessions(now int64) {
	if m.cfg.SessionTimeout <= 0 {
		return // no timeout configured
	}
	for s := m.lruHead; s != nil && now-s.lastSeen >= m.cfg.SessionTimeout; s = m.lruHead {
		switch {
		case s.nlocks > 0 && !s.isolated:
			m.isolate(s)
			m.touch(s, now)
		case s.isolating:
			m.touch(s, now)
		default:
			m.deleteSession(s)
		}
	}
}

func (m *Machine) deleteSession(s *session) {
	m.releaseAll(s)
	m.lruRemove(s)
	delete(m.sessions, s.id)
	delete(m.nonces, s.nonce)
}

func (m *Machine) releaseAll(s *session) {
	for s.locks != nil {
		m.release(s.locks)
	}
}

// release frees e; the entry stays in the map for reuse.
func (m *Machine) release(e *entry) {
	e.sess.unlink(e)
	m.heapRemove(e)
	e.sess = nil
	e.lockID, e.fence, e.deadline = 0, 0, 0
	m.held--
	m.free++
}

// sweep deletes the free entries from the lock table.
func (m *Machine) sweep() {
	for k, e := range m.locks {
		if e.sess == nil {
			delete(m.locks, k)
		}
	}
	m.free = 0
}

// Session lists.

func (s *session) link(e *entry) {
	e.prev, e.next = nil, s.locks
	if s.locks != nil {
		s.locks.prev = e
	}
	s.locks = e
	s.nlocks++
}

func (s *session) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.locks = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	}
	e.prev, e.next = nil, nil
	s.nlocks--
}

// The top bits of an entry of a session's released list say how its LOCK was answered
// for good: granted and released (no bit), refused with LOCKED, or refused with
// LOCK_DELAY. A copy gets the same answer again. Request ids never reach bit 62.
const (
	answeredLocked = 1 << 63
	answeredDelay  = 1 << 62
	answerBits     = answeredLocked | answeredDelay
)

// The released list is kept sorted by id. Ids arrive nearly in order, so an insertion
// is almost always an append, a lookup is a binary search, and pruning below the floor
// cuts a prefix.

// releasedIndex returns the position of the first entry whose id is >= id.
func (s *session) releasedIndex(id uint64) int {
	lo, hi := 0, len(s.released)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s.released[mid]&^answerBits < id {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// hasReleased reports whether id is a LOCK already answered for good, and how (its
// answer bits).
func (s *session) hasReleased(id uint64) (done bool, how uint64) {
	i := s.releasedIndex(id)
	if i < len(s.released) && s.released[i]&^answerBits == id {
		return true, s.released[i] & answerBits
	}
	return false, 0
}

func (s *session) addReleased(entry uint64) {
	id := entry &^ answerBits
	if len(s.released) >= maxReleased {
		n := copy(s.released, s.released[maxReleased/4:])
		s.released = s.released[:n]
	}
	n := len(s.released)
	if n == 0 || s.released[n-1]&^answerBits < id {
		s.released = append(s.released, entry)
		return
	}
	i := s.releasedIndex(id)
	if i < n && s.released[i]&^answerBits == id {
		return
	}
	s.released = append(s.released, 0)
	copy(s.released[i+1:], s.released[i:n])
	s.released[i] = entry
}

// pruneReleased drops the ids below the floor: such requests are dropped anyway.
func (s *session) pruneReleased() {
	i := s.releasedIndex(s.floor)
	if i == 0 {
		return
	}
	n := copy(s.released, s.released[i:])
	s.released = s.released[:n]
}

// LRU of sessions by last-seen time. now never goes backwards, so moving a session to
// the tail on every request keeps the list sorted.

func (m *Machine) touch(s *session, now int64) {
	s.lastSeen = now
	if m.lruTail == s {
		return
	}
	m.lruRemove(s)
	m.lruPush(s)
}

func (m *Machine) lruPush(s *session) {
	s.prev, s.next = m.lruTail, nil
	if m.lruTail != nil {
		m.lruTail.next = s
	} else {
		m.lruHead = s
	}
	m.lruTail = s
}

func (m *Machine) lruRemove(s *session) {
	if s.prev != nil {
		s.prev.next = s.next
	} else {
		m.lruHead = s.next
	}
	if s.next != nil {
		s.next.prev = s.prev
	} else {
		m.lruTail = s.prev
	}
	s.prev, s.next = nil, nil
}

// Expiry heap: a binary min-heap of entries by deadline; each entry knows its index, so
// UPDATE and release fix or remove it in O(log n) without lazy garbage.

func (m *Machine) heapPush(e *entry) {
	e.heapIdx = len(m.expiry)
	m.expiry = append(m.expiry, e)
	m.heapUp(e.heapIdx)
}

func (m *Machine) heapRemove(e *entry) {
	i := e.heapIdx
	if i < 0 {
		return
	}
	last := len(m.expiry) - 1
	if i != last {
		m.heapSwap(i, last)
	}
	m.expiry[last] = nil
	m.expiry = m.expiry[:last]
	e.heapIdx = -1
	if i != last {
		m.heapDown(i)
		m.heapUp(i)
	}
}

func (m *Machine) heapFix(e *entry) {
	if e.heapIdx >= 0 {
		m.heapDown(e.heapIdx)
		m.heapUp(e.heapIdx)
	}
}

func (m *Machine) heapSwap(i, j int) {
	h := m.expiry
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = i
	h[j].heapIdx = j
}

func (m *Machine) heapUp(i int) {
	h := m.expiry
	for i > 0 {
		p := (i - 1) / 2
		if h[p].deadline <= h[i].deadline {
			break
		}
		m.heapSwap(i, p)
		i = p
	}
}

func (m *Machine) heapDown(i int) {
	h := m.expiry
	n := len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && h[r].deadline < h[l].deadline {
			c = r
		}
		if h[i].deadline <= h[c].deadline {
			return
		}
		m.heapSwap(i, c)
		i = c
	}
}

// Read-only views, for the loop and for tests.

// Holder tells who holds key: the session, the lock id and the fence. ok is false when the
// key is free. A key of an isolated session waiting for its isolation command is held.
func (m *Machine) Holder(key string) (session, lockID, fence uint64, ok bool) {
	e := m.locks[key]
	if e == nil || e.sess == nil {
		return 0, 0, 0, false
	}
	return e.sess.id, e.lockID, e.fence, true
}

// Sessions is the number of sessions, isolated ones included.
func (m *Machine) Sessions() int { return len(m.sessions) }

// Locks is the number of keys held.
func (m *Machine) Locks() int { return m.held }

// Isolated tells whether session exists and is isolated.
func (m *Machine) Isolated(session uint64) bool {
	s := m.sessions[session]
	return s != nil && s.isolated
}

// Grants is how many locks have been granted.
func (m *Machine) Grants() uint64 { return m.grants }

// Isolations is how many sessions have been isolated.
func (m *Machine) Isolations() uint64 { return m.isolations }

// Idle tells that the machine has nothing that time alone could change: no session and
// no lock. The loop then needs no tick.
func (m *Machine) Idle() bool { return len(m.sessions) == 0 && m.held == 0 }
