package server

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/netmutex/netmutex/internal/wire"
)

// Deterministic simulation of the state machine: a program (a byte string, from the
// fuzzer or from a seeded generator) drives many sessions through random interleavings
// of commands, with duplicates, stale retransmissions, moving ack floors, isolation
// completions, fence reservations and a virtual clock that jumps. After every step the
// Machine is compared with refMachine, a small reference model written from
// docs/PROTOCOL.md with plain maps and linear scans, and spec-level invariants are
// checked on the results.

// refSession and refMachine: the reference model.
type refSession struct {
	id, nonce           uint64
	serial              uint64 // which session of the model this is, counting from 1
	info                string
	peer                *peerInfo
	lastSeen            int64
	touched             int64 // LRU order: the sequence number of the last touch
	floor               uint64
	isolated, isolating bool
	released            map[uint64]answer // LOCK id answered for good → how
	waiters             []*refWaiter      // in enqueue order
	waitKeys            int
	holderSince         uint64 // when it last went from no lock to one (UNLOCKALL's order)
}

// refWaiter is a queued LOCK or LOCKMANY.
type refWaiter struct {
	sess  *refSession
	id    uint64
	ttl   int64
	bound int64 // 0: none
	seq   uint64
	keys  []string
}

// answer is how a LOCK was answered for good.
type answer uint8

const (
	answerReleased       answer = iota // granted, then released: copies get STALE
	answerLocked                       // refused with LOCKED: copies get LOCKED
	answerDelayed                      // LOCK_DELAY: copies get LOCK_DELAY (lockDelayIsFinal)
	answerTooMany                      // TOO_MANY_LOCKS: copies get it again
	answerFull                         // SERVER_FULL: copies get it again
	answerTooManyWaiters               // TOO_MANY_WAITERS: copies get it again
)

// lockDelayIsFinal says that the Machine remembers LOCKs answered LOCK_DELAY so that
// their copies are not granted late (TestMachineLockDelayDuplicateNotGrantedLate).
const lockDelayIsFinal = true

type refLock struct {
	sess     *refSession
	lockID   uint64
	fence    uint64
	deadline int64
	hot      uint64 // held with waiters: since when (the order a session's release hands them on); 0: no waiters
}

type refMachine struct {
	cfg                machineConfig
	sessions           map[uint64]*refSession
	nonces             map[uint64]*refSession
	locks              map[string]*refLock // held keys only
	fence, fenceEnd    uint64
	grants, isolations uint64
	seq                int64
	effects            []isolation
	serials            uint64
	// answeredBy: for each LOCK of the last apply, by Tag, the serial of the session
	// that answered it (the simulation draws session ids that collide, so an id may
	// name a session that ended and then another).
	answeredBy map[int32]uint64

	// Waiting: FIFO queues of waiters per key, the keys to hand on at the end of a step,
	// the keys whose grant waits for the lock-delay's end or fences, and the grants
	// pushed by the last apply with the serials of their sessions.
	queues     map[string][]*refWaiter
	handQ      []string
	stalled    []string
	isStalled  map[string]bool
	waitKeys   int
	out        []result
	pushSerial []uint64
}

func newRef(cfg machineConfig) *refMachine {
	if cfg.FirstFence == 0 {
		cfg.FirstFence = 1
	}
	return &refMachine{cfg: cfg, sessions: map[uint64]*refSession{}, nonces: map[uint64]*refSession{},
		locks: map[string]*refLock{}, fence: cfg.FirstFence, fenceEnd: cfg.FirstFence,
		queues: map[string][]*refWaiter{}, isStalled: map[string]bool{}}
}

func (m *refMachine) setFenceLimit(end uint64) { m.fenceEnd = max(m.fenceEnd, end) }

func (m *refMachine) touch(s *refSession, now int64) {
	s.lastSeen = now
	m.seq++
	s.touched = m.seq
}

func (m *refMachine) held(s *refSession) []*refLock {
	var out []*refLock
	for _, l := range m.locks {
		if l.sess == s {
			out = append(out, l)
		}
	}
	return out
}

// releaseAll releases every lock of s; those with waiters are handed on, in the order
// they got waiters.
func (m *refMachine) releaseAll(s *refSession) {
	type hotKey struct {
		key string
		hot uint64
	}
	var hot []hotKey
	for k, l := range m.locks {
		if l.sess == s {
			if l.hot != 0 {
				hot = append(hot, hotKey{k, l.hot})
			}
			delete(m.locks, k)
		}
	}
	slices.SortFunc(hot, func(a, b hotKey) int { return cmp.Compare(a.hot, b.hot) })
	for _, h := range hot {
		m.handQ = append(m.handQ, h.key)
	}
}

func (m *refMachine) isolate(s *refSession) {
	m.markIsolated(s)
	if !s.isolating {
		m.releaseAll(s)
	}
}

func (m *refMachine) markIsolated(s *refSession) {
	if s.isolated {
		return
	}
	s.isolated = true
	m.isolations++
	if m.cfg.Isolate {
		s.isolating = true
		m.effects = append(m.effects, isolation{Session: s.id, Info: s.info})
	}
	m.dropWaiters(s)
}

func (m *refMachine) apply(now int64, cmds []command) ([]result, []isolation) {
	m.effects = nil
	m.out = nil
	m.pushSerial = nil
	m.answeredBy = map[int32]uint64{}
	// Locks whose deadline passed isolate their session, earliest first (equal deadlines:
	// lowest fence first). Keys of a session whose isolation command runs no longer
	// expire.
	for {
		var first *refLock
		for _, l := range m.locks {
			if l.sess.isolating || l.deadline > now {
				continue
			}
			if first == nil || l.deadline < first.deadline || (l.deadline == first.deadline && l.fence < first.fence) {
				first = l
			}
		}
		if first == nil {
			break
		}
		m.isolate(first.sess)
		m.settle(now)
	}
	// Waiters whose bound passed, earliest first (equal bounds: first queued first).
	for {
		var first *refWaiter
		for _, q := range m.queues {
			for _, w := range q {
				if w.bound == 0 || w.bound > now {
					continue
				}
				if first == nil || w.bound < first.bound || (w.bound == first.bound && w.seq < first.seq) {
					first = w
				}
			}
		}
		if first == nil {
			break
		}
		m.giveUp(first)
		m.settle(now)
	}
	// Silent sessions, least recently seen first.
	if m.cfg.SessionTimeout > 0 {
		for {
			var oldest *refSession
			for _, s := range m.sessions {
				if oldest == nil || s.touched < oldest.touched {
					oldest = s
				}
			}
			if oldest == nil || now-oldest.lastSeen < m.cfg.SessionTimeout {
				break
			}
			switch {
			case len(m.held(oldest)) > 0 && !oldest.isolated:
				m.isolate(oldest)
				m.touch(oldest, now)
			case oldest.isolating:
				m.touch(oldest, now)
			default:
				m.deleteSession(oldest)
			}
			m.settle(now)
		}
	}
	// Keys stalled by the lock-delay or by fences, once grants may resume.
	if len(m.stalled) > 0 && m.canGrant(1, now) {
		for n := len(m.stalled); n > 0; n-- {
			k := m.stalled[0]
			m.stalled = m.stalled[1:]
			delete(m.isStalled, k)
			m.handQ = append(m.handQ, k)
			m.settle(now)
		}
	}
	for i := range cmds {
		c := &cmds[i]
		if r, ok := m.one(now, c); ok {
			r.Tag, r.ID = c.Tag, c.ID
			m.out = append(m.out, r)
		}
		m.settle(now)
	}
	return m.out, m.effects
}

// Waiting, as docs/PROTOCOL.md tells it.

func (m *refMachine) canGrant(n int, now int64) bool {
	return now >= m.cfg.LockDelayUntil && m.fenceEnd-m.fence >= uint64(n)
}

func (m *refMachine) findWaiter(s *refSession, id uint64) *refWaiter {
	for _, w := range s.waiters {
		if w.id == id {
			return w
		}
	}
	return nil
}

// enqueue queues a waiter in every key's queue; a free key it heads is handed on (the
// grant then stalls: it would have been granted at once otherwise).
func (m *refMachine) enqueue(now int64, s *refSession, c *command, keys []string) {
	m.seq++
	w := &refWaiter{sess: s, id: c.ID, ttl: int64(c.TTLMs) * 1e6, seq: uint64(m.seq), keys: keys}
	if c.WaitMs > 0 {
		w.bound = now + int64(c.WaitMs)*1e6
	}
	for _, k := range keys {
		if l := m.locks[k]; l != nil && len(m.queues[k]) == 0 {
			m.seq++
			l.hot = uint64(m.seq)
		}
		m.queues[k] = append(m.queues[k], w)
	}
	s.waiters = append(s.waiters, w)
	s.waitKeys += len(keys)
	m.waitKeys += len(keys)
	if m.locks[keys[0]] == nil && m.queues[keys[0]][0] == w {
		m.handQ = append(m.handQ, keys[0])
	}
}

// removeWaiter takes w out of every queue, in its key order; a free key it headed is
// handed on.
func (m *refMachine) removeWaiter(w *refWaiter) {
	for _, k := range w.keys {
		q := m.queues[k]
		i := slices.Index(q, w)
		q = slices.Delete(q, i, i+1)
		if len(q) == 0 {
			delete(m.queues, k)
		} else {
			m.queues[k] = q
		}
		l := m.locks[k]
		switch {
		case l != nil && len(q) == 0:
			l.hot = 0
		case l == nil && i == 0 && len(q) > 0:
			m.handQ = append(m.handQ, k)
		}
	}
	s := w.sess
	i := slices.Index(s.waiters, w)
	s.waiters = slices.Delete(s.waiters, i, i+1)
	s.waitKeys -= len(w.keys)
	m.waitKeys -= len(w.keys)
}

func (m *refMachine) giveUp(w *refWaiter) {
	m.removeWaiter(w)
	if w.id >= w.sess.floor {
		m.addReleased(w.sess, w.id, answerLocked)
	}
}

func (m *refMachine) dropWaiters(s *refSession) {
	for len(s.waiters) > 0 {
		m.removeWaiter(s.waiters[0])
	}
}

func (m *refMachine) settle(now int64) {
	for i := 0; i < len(m.handQ); i++ {
		m.handOn(m.handQ[i], now)
	}
	m.handQ = nil
}

// handOn grants free key k to the head of its queue when it heads every queue of its
// keys and each is free; waiters past their bound are removed first.
func (m *refMachine) handOn(k string, now int64) {
	for m.locks[k] == nil && len(m.queues[k]) > 0 {
		w := m.queues[k][0]
		if w.bound != 0 && w.bound <= now {
			m.giveUp(w)
			continue
		}
		for _, o := range w.keys {
			if m.locks[o] != nil || m.queues[o][0] != w {
				return
			}
		}
		if !m.canGrant(len(w.keys), now) {
			if !m.isStalled[k] {
				m.isStalled[k] = true
				m.stalled = append(m.stalled, k)
			}
			return
		}
		first := m.fence
		s := w.sess
		for _, o := range w.keys {
			q := m.queues[o][1:]
			if len(q) == 0 {
				delete(m.queues, o)
			} else {
				m.queues[o] = q
			}
			m.grantKey(s, o, w.id, now+w.ttl)
		}
		i := slices.Index(s.waiters, w)
		s.waiters = slices.Delete(s.waiters, i, i+1)
		s.waitKeys -= len(w.keys)
		m.waitKeys -= len(w.keys)
		m.out = append(m.out, result{Op: wire.OpOK, Tag: -1, Session: s.id, ID: w.id, Fence: first})
		m.pushSerial = append(m.pushSerial, s.serial)
		return
	}
}

// grantKey gives free key k to (s, id) with the next fence.
func (m *refMachine) grantKey(s *refSession, k string, id uint64, deadline int64) {
	if len(m.held(s)) == 0 {
		m.seq++
		s.holderSince = uint64(m.seq)
	}
	l := &refLock{sess: s, lockID: id, fence: m.fence, deadline: deadline}
	if len(m.queues[k]) > 0 {
		m.seq++
		l.hot = uint64(m.seq)
	}
	m.locks[k] = l
	m.fence++
	m.grants++
}

// mayHold: the lock caps, waiting keys counted as held.
func (m *refMachine) mayHold(s *refSession, n int) (wire.Code, bool) {
	if m.cfg.MaxLocksPerSession > 0 && len(m.held(s))+s.waitKeys+n > m.cfg.MaxLocksPerSession {
		return wire.CodeTooManyLocks, false
	}
	if m.cfg.MaxLocks > 0 && len(m.locks)+m.waitKeys+n > m.cfg.MaxLocks {
		return wire.CodeServerFull, false
	}
	return 0, true
}

func (m *refMachine) waiterRoom(s *refSession, keys []string) bool {
	if m.cfg.MaxWaitersPerSession > 0 && len(s.waiters) >= m.cfg.MaxWaitersPerSession {
		return false
	}
	for _, k := range keys {
		if m.cfg.MaxWaitersPerKey > 0 && len(m.queues[k]) >= m.cfg.MaxWaitersPerKey {
			return false
		}
	}
	return true
}

// lockKeys is LOCK (one key) and LOCKMANY (keys, checked).
func (m *refMachine) lockKeys(now int64, s *refSession, c *command, keys []string, r *result) {
	bad := func(code wire.Code) { r.Op, r.Code = wire.OpError, code }
	refuse := func(code wire.Code, how answer) {
		bad(code)
		m.addReleased(s, c.ID, how)
	}
	capCode := map[wire.Code]answer{wire.CodeTooManyLocks: answerTooMany, wire.CodeServerFull: answerFull}
	if how, done := s.released[c.ID]; done {
		switch how {
		case answerLocked:
			r.Op = wire.OpLocked
		case answerDelayed:
			bad(wire.CodeLockDelay)
		case answerTooMany:
			bad(wire.CodeTooManyLocks)
		case answerFull:
			bad(wire.CodeServerFull)
		case answerTooManyWaiters:
			bad(wire.CodeTooManyWaiters)
		default:
			bad(wire.CodeStale)
		}
		return
	}
	if m.findWaiter(s, c.ID) != nil {
		r.Op = wire.OpQueued
		return
	}
	if l := m.locks[keys[0]]; l != nil && l.sess == s && l.lockID == c.ID {
		r.Fence = l.fence
		return
	}
	busy := false
	for _, k := range keys {
		busy = busy || m.locks[k] != nil || len(m.queues[k]) > 0
	}
	if busy && !c.Wait {
		r.Op = wire.OpLocked
		m.addReleased(s, c.ID, answerLocked)
		return
	}
	if code, ok := m.mayHold(s, len(keys)); !ok {
		refuse(code, capCode[code])
		return
	}
	if !busy && !m.canGrant(len(keys), now) && !c.Wait {
		if lockDelayIsFinal {
			m.addReleased(s, c.ID, answerDelayed)
		}
		bad(wire.CodeLockDelay)
		return
	}
	if busy || !m.canGrant(len(keys), now) {
		if !m.waiterRoom(s, keys) {
			refuse(wire.CodeTooManyWaiters, answerTooManyWaiters)
			return
		}
		m.enqueue(now, s, c, keys)
		r.Op = wire.OpQueued
		return
	}
	r.Fence = m.fence
	for _, k := range keys {
		m.grantKey(s, k, c.ID, now+int64(c.TTLMs)*1e6)
	}
}

func (m *refMachine) deleteSession(s *refSession) {
	m.dropWaiters(s)
	m.releaseAll(s)
	delete(m.sessions, s.id)
	delete(m.nonces, s.nonce)
}

func (m *refMachine) one(now int64, c *command) (result, bool) {
	switch c.kind {
	case kindConnect:
		switch {
		case c.ID == 0:
			return result{Op: wire.OpError, Code: wire.CodeBadRequest, Session: c.Session}, true
		case len(c.Info) > wire.MaxIsolationInfo:
			return result{Op: wire.OpError, Code: wire.CodeBadIsolationInfo, Session: c.Session}, true
		}
		if s := m.nonces[c.ID]; s != nil {
			m.touch(s, now)
			return result{Op: wire.OpConnected, Session: s.id}, true
		}
		full := result{Op: wire.OpError, Code: wire.CodeTooManySessions, Session: c.Session}
		if m.cfg.MaxSessions > 0 && len(m.sessions) >= m.cfg.MaxSessions {
			return full, true
		}
		if c.peerInfo != nil && m.cfg.MaxSessionsPerAddr > 0 {
			n := 0
			for _, o := range m.sessions {
				if o.peer != nil && o.peer.Addr.Addr().Unmap() == c.peerInfo.Addr.Addr().Unmap() {
					n++
				}
			}
			if n >= m.cfg.MaxSessionsPerAddr {
				return full, true
			}
		}
		id := c.NewSession
		for id == 0 || m.sessions[id] != nil {
			id++
		}
		m.serials++
		s := &refSession{id: id, serial: m.serials, nonce: c.ID, info: string(c.Info), peer: c.peerInfo, released: map[uint64]answer{}}
		m.sessions[s.id], m.nonces[c.ID] = s, s
		m.touch(s, now)
		return result{Op: wire.OpConnected, Session: s.id}, true
	case kindPing:
		return result{Op: wire.OpPong, Session: c.Session}, true
	case kindIsolationDone:
		if s := m.sessions[c.Session]; s != nil && s.isolating {
			s.isolating = false
			m.releaseAll(s)
		}
		return result{}, false
	}
	s := m.sessions[c.Session]
	if s == nil {
		return result{Op: wire.OpDisconnected, Session: c.Session}, true
	}
	m.touch(s, now)
	if c.kind == kindLock || c.kind == kindLockMany {
		m.answeredBy[c.Tag] = s.serial
	}
	if c.kind == kindUnlock {
		m.answeredBy[c.Tag] = s.serial
	}
	if c.Floor > s.floor {
		s.floor = c.Floor
		for id := range s.released {
			if id < s.floor {
				delete(s.released, id)
			}
		}
	}
	if c.ID < s.floor {
		return result{}, false // below the ack floor: dropped
	}
	r := result{Op: wire.OpOK, Session: s.id}
	if s.isolated {
		r.Op = wire.OpIsolated
		return r, true
	}
	bad := func(code wire.Code) (result, bool) {
		r.Op, r.Code = wire.OpError, code
		return r, true
	}
	ttlBad := func(ttl uint32) (wire.Code, bool) {
		switch {
		case ttl == 0:
			return wire.CodeBadTTL, true
		case int64(ttl)*1e6 > m.cfg.MaxTTL:
			return wire.CodeTTLTooLong, true
		}
		return 0, false
	}
	switch c.kind {
	case kindTouch:
		r.Op = wire.OpPong
	case kindDisconnect:
		m.deleteSession(s)
		r.Op = wire.OpDisconnected
	case kindLock:
		if len(c.Key) == 0 || c.ID == 0 {
			return bad(wire.CodeBadRequest)
		}
		if code, isBad := ttlBad(c.TTLMs); isBad {
			return bad(code)
		}
		m.lockKeys(now, s, c, []string{string(c.Key)}, &r)
	case kindLockMany:
		var keys []string
		rest, ok := c.Key, c.KeyCount >= 1 && c.KeyCount <= wire.MaxManyKeys
		for i := 0; ok && i < int(c.KeyCount); i++ {
			if len(rest) == 0 || rest[0] == 0 || len(rest) < 1+int(rest[0]) {
				ok = false
				break
			}
			k := string(rest[1 : 1+int(rest[0])])
			rest = rest[1+int(rest[0]):]
			ok = !slices.Contains(keys, k)
			keys = append(keys, k)
		}
		if !ok || len(rest) != 0 || c.ID == 0 {
			return bad(wire.CodeBadRequest)
		}
		if code, isBad := ttlBad(c.TTLMs); isBad {
			return bad(code)
		}
		m.lockKeys(now, s, c, keys, &r)
	case kindUpdate:
		if len(c.Key) == 0 || c.LockID == 0 {
			return bad(wire.CodeBadRequest)
		}
		if code, isBad := ttlBad(c.TTLMs); isBad {
			return bad(code)
		}
		l := m.locks[string(c.Key)]
		if l == nil || l.sess != s || l.lockID != c.LockID {
			return bad(wire.CodeNotHeld)
		}
		l.deadline = now + int64(c.TTLMs)*1e6
		r.Fence = l.fence
	case kindUnlock:
		if len(c.Key) == 0 || c.LockID == 0 {
			return bad(wire.CodeBadRequest)
		}
		if w := m.findWaiter(s, c.LockID); w != nil {
			m.giveUp(w) // a queued LOCK cancelled
			break
		}
		l := m.locks[string(c.Key)]
		if l != nil && l.sess == s && l.lockID == c.LockID {
			delete(m.locks, string(c.Key))
			if len(m.queues[string(c.Key)]) > 0 {
				m.handQ = append(m.handQ, string(c.Key))
			}
			if c.LockID >= s.floor {
				m.addReleased(s, c.LockID, answerReleased)
			}
		} else if c.LockID >= s.floor {
			m.addReleased(s, c.LockID, answerLocked) // gone, or its LOCK not here yet
		}
	case kindUnlockAll:
		if !c.Admin {
			return bad(wire.CodeForbidden)
		}
		// The holders, the latest to start holding first: all are isolated (their
		// waiters leave), then all released; the keys are handed on after the command.
		var holders []*refSession
		for _, o := range m.sessions {
			if len(m.held(o)) > 0 {
				holders = append(holders, o)
			}
		}
		slices.SortFunc(holders, func(a, b *refSession) int { return cmp.Compare(b.holderSince, a.holderSince) })
		for _, o := range holders {
			m.markIsolated(o)
		}
		for _, o := range holders {
			m.releaseAll(o)
		}
		r.Op = wire.OpPong
	default:
		return bad(wire.CodeBadRequest)
	}
	return r, true
}

// addReleased remembers a LOCK id answered for good. Past maxReleased ids the lowest
// quarter is forgotten; the floor does not move (see maxReleased).
func (m *refMachine) addReleased(s *refSession, id uint64, how answer) {
	if _, ok := s.released[id]; ok {
		return
	}
	if len(s.released) >= maxReleased {
		ids := make([]uint64, 0, len(s.released))
		for r := range s.released {
			ids = append(ids, r)
		}
		slices.Sort(ids)
		for _, r := range ids[:maxReleased/4] {
			delete(s.released, r)
		}
	}
	s.released[id] = how
}

// The driver.

// simKeys are the keys the simulation uses; "" is a bad key.
var simKeys = []string{"a", "b", "c", "d", ""}

// simClient is what a well-behaved or misbehaving client remembers of its session.
type simClient struct {
	nonce   uint64
	peer    *peerInfo // the far end its CONNECTs come from (nil: none given)
	session uint64    // 0 before CONNECTED
	nextID  uint64
	floor   uint64
	sent    []command // every request sent, for duplicates and stale copies
	lockIDs []uint64  // ids of LOCKs answered OK
	lockKey []string  // and their keys
}

// prog reads a program; past its end it reads zeros.
type prog struct {
	b []byte
	i int
}

func (p *prog) byte() byte {
	if p.i >= len(p.b) {
		p.i++
		return 0
	}
	p.i++
	return p.b[p.i-1]
}

func (p *prog) done() bool { return p.i >= len(p.b) }

func (p *prog) pick(n int) int {
	if n <= 0 {
		return 0
	}
	return int(p.byte()) % n
}

// simulate runs the program and returns an error describing the first divergence or
// violated invariant, with a trace of the steps that led to it.
func simulate(program []byte) error {
	p := &prog{b: program}
	flags := p.byte()
	caps := p.byte()
	cfg := machineConfig{
		MaxTTL:  500 * ms,
		Isolate: flags&1 != 0,
	}
	if flags&16 != 0 {
		cfg.MaxSessions = 2 + int(caps&7)
	}
	if flags&32 != 0 {
		cfg.MaxSessionsPerAddr = 1 + int(caps>>3&3)
	}
	if flags&64 != 0 {
		cfg.MaxLocksPerSession = 1 + int(caps>>5&3)
	}
	if flags&128 != 0 {
		cfg.MaxLocks = 1 + int(caps>>6)
	}
	if flags&2 != 0 {
		cfg.SessionTimeout = 2000 * ms
	}
	if flags&4 != 0 {
		cfg.LockDelayUntil = 300 * ms
	}
	if flags&8 != 0 {
		cfg.FirstFence = 1 << 40
	}
	if w := p.byte(); w&1 != 0 {
		cfg.MaxWaitersPerKey = 1 + int(w>>1&3)
	} else if w&8 != 0 {
		cfg.MaxWaitersPerSession = 1 + int(w>>4&3)
	}
	m := newMachine(cfg)
	ref := newRef(cfg)
	limit := m.NextFence() + uint64(p.pick(8))
	m.SetFenceLimit(limit)
	ref.setFenceLimit(limit)

	var (
		now      int64
		clients  []*simClient
		pending  []uint64 // sessions whose isolation command was asked for and not yet done
		trace    []string
		maxFence uint64
		// Final answers to LOCK per (session, id): a grant's fence, or 0 for a refusal.
		// Keyed by the sending client and the model's serial of the session: the
		// simulation draws session ids that collide, so a client whose session ended
		// may speak under an id drawn again for another.
		lockAnswers = map[[3]uint64]uint64{}
		fenceOf     = map[uint64][2]uint64{} // fence → the (session serial, LOCK id) granted it
		allKeys     = simKeys[:len(simKeys)-1]
		// Waiting, observed from the answers alone: each request answered QUEUED (by
		// client, session serial and id), per key in the order they were queued; the
		// ids the client cancelled (UNLOCK applied); the sessions that ended.
		// Keyed by session serial and id: a client whose session ended may speak under
		// an id drawn again for another's session.
		waiting   = map[[2]uint64]*simWait{}
		fifo      = map[string][][2]uint64{}
		cancelled = map[[2]uint64]bool{}
		ended     = map[uint64]bool{}
	)
	fail := func(format string, args ...any) error {
		if len(trace) > 40 {
			trace = trace[len(trace)-40:]
		}
		return fmt.Errorf("%s\nlast steps:\n%s", fmt.Sprintf(format, args...), strings.Join(trace, "\n"))
	}
	for step := 0; step < 2000 && !p.done(); step++ {
		var cmds []command
		var senders []*simClient
		switch op := p.byte(); {
		case op < 40: // the clock moves a little
			now += int64(p.byte()%20) * ms
		case op < 50: // the clock jumps: past TTLs, lock-delay, session timeouts
			now += int64(1+p.byte()%16) * 200 * ms
		case op < 56: // the loop reserves more fences
			limit := m.NextFence() + uint64(p.pick(16))
			m.SetFenceLimit(limit)
			ref.setFenceLimit(limit)
			trace = append(trace, fmt.Sprintf("t=%dms SetFenceLimit(%d)", now/ms, limit))
			continue
		case op < 64 && len(pending) > 0: // an isolation command finished
			i := p.pick(len(pending))
			cmds = append(cmds, command{kind: kindIsolationDone, Session: pending[i], Tag: -1})
			pending = slices.Delete(pending, i, i+1)
		default:
			n := 1 + p.pick(4)
			for j := 0; j < n; j++ {
				c, cl := nextCommand(p, &clients, int32(len(cmds)))
				cmds, senders = append(cmds, c), append(senders, cl)
			}
		}
		got, gotIso := m.Apply(now, cmds, nil, nil)
		want, wantIso := ref.apply(now, cmds)
		for _, c := range cmds {
			trace = append(trace, fmt.Sprintf("t=%dms %s", now/ms, fmtCmd(c)))
		}
		for _, r := range got {
			trace = append(trace, fmt.Sprintf("    -> %s", fmtRes(r)))
		}
		if !slices.Equal(got, want) {
			return fail("step %d: results differ\nmachine: %s\nmodel:   %s", step, fmtResults(got), fmtResults(want))
		}
		sortIso := func(a, b isolation) int { return cmp.Compare(a.Session, b.Session) }
		slices.SortFunc(gotIso, sortIso)
		slices.SortFunc(wantIso, sortIso)
		if !slices.Equal(gotIso, wantIso) {
			return fail("step %d: isolations differ: machine %v, model %v", step, gotIso, wantIso)
		}
		for _, iso := range gotIso {
			if !cfg.Isolate {
				return fail("step %d: isolation command asked for without one configured", step)
			}
			pending = append(pending, iso.Session)
		}
		// What the clients learn. First the sessions connected and the requests queued
		// by this step (a request queued may be granted later in the same step), then
		// every answer and pushed grant in the order they were given.
		granted := map[[2]uint64]bool{} // waiters granted by this step
		cancelNow := map[[2]uint64]bool{}
		for _, r := range got {
			if r.Tag < 0 {
				continue
			}
			c := cmds[r.Tag]
			sender := senders[r.Tag]
			switch {
			case c.kind == kindConnect && r.Op == wire.OpConnected:
				for _, cl := range clients {
					if cl.nonce == c.ID && cl.session == 0 {
						cl.session = r.Session
					}
				}
				if ps := ref.sessions[r.Session]; ps != nil {
					if m.peerInfo(r.Session) != ps.peer {
						return fail("step %d: session %x: Peer %v, CONNECT's %v", step, r.Session, m.peerInfo(r.Session), ps.peer)
					}
				}
			case c.kind == kindUnlock && r.Op == wire.OpOK:
				if serial, ok := ref.answeredBy[r.Tag]; ok {
					cancelNow[[2]uint64{serial, c.LockID}] = true
				}
			case r.Op == wire.OpQueued:
				wk := [2]uint64{ref.answeredBy[r.Tag], r.ID}
				if !c.Wait && waiting[wk] == nil {
					return fail("step %d: a LOCK without WAIT answered QUEUED", step)
				}
				if _, answered := lockAnswers[[3]uint64{sender.nonce, wk[0], wk[1]}]; answered {
					return fail("step %d: LOCK %d of session %x answered QUEUED after its final answer", step, r.ID, r.Session)
				}
				if waiting[wk] == nil {
					simSeen.queued++
					keys := reqKeys(c)
					w := &simWait{keys: keys, cl: sender}
					if c.WaitMs > 0 {
						w.bound = now + int64(c.WaitMs)*ms
					}
					waiting[wk] = w
					for _, key := range keys {
						fifo[key] = append(fifo[key], wk)
					}
					sender.learn(r.ID, keys) // so that it may cancel it
				}
			}
		}
		pushIdx := 0
		for _, r := range got {
			if r.Tag < 0 {
				// A pushed grant: to a waiter, in each key's FIFO order, never after its
				// bound, its cancellation or its session's end.
				serial := ref.pushSerial[pushIdx]
				pushIdx++
				wk := [2]uint64{serial, r.ID}
				w := waiting[wk]
				if w == nil {
					return fail("step %d: grant pushed to LOCK %d of session %x, which was never queued", step, r.ID, r.Session)
				}
				cl := w.cl
				k := [3]uint64{cl.nonce, serial, r.ID}
				switch {
				case ended[serial]:
					return fail("step %d: grant pushed to session %x, ended or isolated earlier", step, r.Session)
				case cancelled[wk]:
					return fail("step %d: grant pushed to LOCK %d of session %x after its UNLOCK", step, r.ID, r.Session)
				case w.bound != 0 && w.bound <= now:
					return fail("step %d: grant pushed to LOCK %d of session %x after its bound", step, r.ID, r.Session)
				}
				prev, answered := lockAnswers[k]
				if answered {
					return fail("step %d: LOCK %d of session %x granted twice", step, r.ID, r.Session)
				}
				if err := checkGrant(r, k, len(w.keys), answered, prev, &maxFence, fenceOf); err != nil {
					return fail("step %d: pushed: %v", step, err)
				}
				lockAnswers[k] = r.Fence
				cl.learn(r.ID, w.keys)
				granted[wk] = true
				simSeen.pushed++
				if len(w.keys) > 1 {
					simSeen.pushedMany++
				}
				for _, key := range w.keys {
					q := fifo[key]
					i := slices.Index(q, wk)
					for _, x := range q[:i] {
						xw := waiting[x]
						if !granted[x] && !cancelled[x] && !cancelNow[x] && !ended[x[0]] &&
							(xw.bound == 0 || xw.bound > now) && ref.sessionAlive(x[0]) {
							return fail("step %d: key %q granted to LOCK %d of session %x before an earlier waiter %v", step, key, r.ID, r.Session, x)
						}
					}
				}
				continue
			}
			c := cmds[r.Tag]
			if c.kind != kindLock && c.kind != kindLockMany {
				continue
			}
			sender := senders[r.Tag]
			k := [3]uint64{sender.nonce, ref.answeredBy[r.Tag], r.ID}
			keys := reqKeys(c)
			prev, answered := lockAnswers[k]
			switch r.Op {
			case wire.OpOK:
				if err := checkGrant(r, k, len(keys), answered, prev, &maxFence, fenceOf); err != nil {
					return fail("step %d: %v", step, err)
				}
				if w := waiting[[2]uint64{k[1], k[2]}]; w != nil && w.cl == sender && !answered {
					return fail("step %d: LOCK %d of session %x, queued, answered OK rather than pushed", step, r.ID, r.Session)
				}
				if !answered {
					lockAnswers[k] = r.Fence
					sender.learn(r.ID, keys)
					if len(keys) > 1 {
						simSeen.grantedMany++
					}
				}
			case wire.OpLocked, wire.OpError:
				// LOCKED, LOCK_DELAY and the caps are final refusals: the client gives up
				// the id.
				final := r.Op == wire.OpLocked || (lockDelayIsFinal && r.Code == wire.CodeLockDelay) ||
					r.Code == wire.CodeTooManyLocks || r.Code == wire.CodeServerFull || r.Code == wire.CodeTooManyWaiters
				if !answered && final {
					lockAnswers[k] = 0
				}
			}
		}
		for k := range cancelNow {
			if waiting[k] != nil && !granted[k] && !cancelled[k] {
				simSeen.cancelled++
			}
			cancelled[k] = true
		}
		for wk := range waiting {
			if !ref.sessionAlive(wk[0]) {
				ended[wk[0]] = true
			}
		}
		for key, q := range fifo {
			q = slices.DeleteFunc(q, func(x [2]uint64) bool {
				w := waiting[x]
				return granted[x] || cancelled[x] || ended[x[0]] || (w.bound != 0 && w.bound <= now)
			})
			fifo[key] = q
		}
		if err := checkQueues(m, now); err != nil {
			return fail("step %d: %v", step, err)
		}
		if err := compareState(m, ref, allKeys, clients); err != nil {
			return fail("step %d: %v", step, err)
		}
		if err := checkCaps(m, cfg); err != nil {
			return fail("step %d: %v", step, err)
		}
	}
	return nil
}

// simSeen counts what the simulation exercised, so that a change of the generator that
// stops reaching waiting is noticed (TestSimulateMachine).
var simSeen struct {
	queued, pushed, pushedMany, cancelled, grantedMany int
}

// simWait is a request the simulation saw answered QUEUED.
type simWait struct {
	keys  []string
	bound int64      // 0: none
	cl    *simClient // the client that sent it
}

// learn records that the client's request id was granted (or queued) for keys: later
// UPDATEs and UNLOCKs name it.
func (cl *simClient) learn(id uint64, keys []string) {
	for _, k := range keys {
		cl.lockIDs = append(cl.lockIDs, id)
		cl.lockKey = append(cl.lockKey, k)
	}
}

// reqKeys lists the keys of a LOCK or LOCKMANY as sent (a malformed list as far as it
// reads).
func reqKeys(c command) []string {
	if c.kind == kindLock {
		return []string{string(c.Key)}
	}
	var keys []string
	rest := c.Key
	for i := 0; i < int(c.KeyCount) && len(rest) > 0 && len(rest) >= 1+int(rest[0]); i++ {
		keys = append(keys, string(rest[1:1+int(rest[0])]))
		rest = rest[1+int(rest[0]):]
	}
	return keys
}

// checkGrant checks an OK to a LOCK or LOCKMANY of n keys: granted once, with one fence
// (n consecutive ones), never after it was refused; fences strictly increase over all
// grants.
func checkGrant(r result, k [3]uint64, n int, answered bool, prev uint64, maxFence *uint64, fenceOf map[uint64][2]uint64) error {
	switch {
	case r.Fence == 0:
		return fmt.Errorf("LOCK granted with fence 0")
	case answered && prev == 0:
		return fmt.Errorf("LOCK %d of session %x granted after it was refused", r.ID, r.Session)
	case answered && prev != r.Fence:
		return fmt.Errorf("LOCK %d of session %x granted fence %d, earlier %d", r.ID, r.Session, r.Fence, prev)
	case !answered && r.Fence <= *maxFence && fenceOf[r.Fence] != [2]uint64{k[1], k[2]}:
		return fmt.Errorf("fence %d granted after %d", r.Fence, *maxFence)
	}
	if !answered && r.Fence > *maxFence {
		// A new grant (not a copy of one answered to another client speaking under
		// the same session id and request id).
		*maxFence = max(*maxFence, r.Fence+uint64(n)-1)
		for i := 0; i < n; i++ {
			fenceOf[r.Fence+uint64(i)] = [2]uint64{k[1], k[2]}
		}
	}
	return nil
}

// sessionAlive tells whether the session with serial exists and is not isolated.
func (m *refMachine) sessionAlive(serial uint64) bool {
	for _, s := range m.sessions {
		if s.serial == serial {
			return !s.isolated
		}
	}
	return false
}

// checkQueues checks the Machine's queues on their own: links and counts agree, a held
// key has waiters exactly when it is hot, waiters of a session are linked and counted
// with it, and no free key is left with a head that could be granted now (it is
// reserved for a multi-key head, or stalled until grants may resume).
func checkQueues(m *machine, now int64) error {
	nodes, waitKeys := 0, 0
	for k, e := range m.locks {
		n := 0
		var prev *qnode
		for q := e.qhead; q != nil; q = q.next {
			if q.prev != prev || q.e != e {
				return fmt.Errorf("key %q: queue links broken", k)
			}
			if m.waiters[waitKey{q.w.sess, q.w.id}] != q.w {
				return fmt.Errorf("key %q: a waiter not in the index", k)
			}
			if q.w.sess.isolated || m.sessions[q.w.sess.id] != q.w.sess {
				return fmt.Errorf("key %q: a waiter of an ended or isolated session", k)
			}
			prev = q
			n++
		}
		if e.qtail != prev || e.nwait != n {
			return fmt.Errorf("key %q: tail or count (%d, %d counted) wrong", k, e.nwait, n)
		}
		nodes += n
		held := e.sess != nil && !e.sess.draining
		if e.sess != nil && e.hot != (n > 0) {
			return fmt.Errorf("key %q: hot=%v with %d waiters", k, e.hot, n)
		}
		if e.sess != nil && e.sess.draining && n > 0 {
			return fmt.Errorf("key %q: waiters behind a released holder", k)
		}
		if !held && n > 0 && !e.stalled {
			w := e.qhead.w
			grantable := w.bound == 0 || w.bound > now
			for i := range w.nodes {
				if o := &w.nodes[i]; o.e.sess != nil || o.e.qhead != o {
					grantable = false
				}
			}
			stalled := false
			for i := range w.nodes {
				stalled = stalled || w.nodes[i].e.stalled
			}
			switch {
			case grantable && m.canGrant(len(w.nodes), now):
				return fmt.Errorf("key %q: free, its head (%x, %d) grantable and not granted", k, w.sess.id, w.id)
			case grantable && !stalled:
				return fmt.Errorf("key %q: free, its head (%x, %d) waits for grants to resume, not stalled", k, w.sess.id, w.id)
			}
		}
	}
	for _, s := range m.sessions {
		n, keys := 0, 0
		for w := s.whead; w != nil; w = w.snext {
			n++
			keys += len(w.nodes)
		}
		if n != s.nwaiters || keys != s.waitKeys {
			return fmt.Errorf("session %x: %d waiters of %d keys, counted %d of %d", s.id, n, keys, s.nwaiters, s.waitKeys)
		}
		waitKeys += keys
	}
	if nodes != waitKeys || waitKeys != m.waitKeys {
		return fmt.Errorf("%d queue nodes, %d waiting keys by session, %d counted", nodes, waitKeys, m.waitKeys)
	}
	return nil
}

// compareState checks every observable of the Machine against the model.
func compareState(m *machine, ref *refMachine, keys []string, clients []*simClient) error {
	held := 0
	for _, k := range keys {
		s, id, f, ok := m.Holder(k)
		l := ref.locks[k]
		if ok != (l != nil) {
			return fmt.Errorf("key %q: machine held=%v, model held=%v", k, ok, l != nil)
		}
		if l != nil {
			held++
			if s != l.sess.id || id != l.lockID || f != l.fence {
				return fmt.Errorf("key %q: machine holder (%x, %d, fence %d), model (%x, %d, fence %d)", k, s, id, f, l.sess.id, l.lockID, l.fence)
			}
		}
	}
	if m.Locks() != held || len(ref.locks) != held {
		return fmt.Errorf("machine counts %d locks, model %d, keys show %d", m.Locks(), len(ref.locks), held)
	}
	if m.Sessions() != len(ref.sessions) {
		return fmt.Errorf("machine has %d sessions, model %d", m.Sessions(), len(ref.sessions))
	}
	if m.Grants() != ref.grants || m.Isolations() != ref.isolations {
		return fmt.Errorf("grants %d/%d, isolations %d/%d (machine/model)", m.Grants(), ref.grants, m.Isolations(), ref.isolations)
	}
	if m.NextFence() != ref.fence || m.FencesLeft() != ref.fenceEnd-ref.fence {
		return fmt.Errorf("next fence %d/%d, left %d/%d (machine/model)", m.NextFence(), ref.fence, m.FencesLeft(), ref.fenceEnd-ref.fence)
	}
	for _, c := range clients {
		if c.session == 0 {
			continue
		}
		s := ref.sessions[c.session]
		if want := s != nil && s.isolated; m.Isolated(c.session) != want {
			return fmt.Errorf("session %x: machine isolated=%v, model %v", c.session, m.Isolated(c.session), want)
		}
	}
	for _, k := range keys {
		var want [][2]uint64
		for _, w := range ref.queues[k] {
			want = append(want, [2]uint64{w.sess.id, w.id})
		}
		if got := m.Queue(k); !slices.Equal(got, want) {
			return fmt.Errorf("key %q: machine queue %v, model %v", k, got, want)
		}
	}
	if m.Waiters() != countWaiters(ref) {
		return fmt.Errorf("machine has %d waiters, model %d", m.Waiters(), countWaiters(ref))
	}
	if m.Idle() != (len(ref.sessions) == 0 && len(ref.locks) == 0) {
		return fmt.Errorf("machine idle=%v, model disagrees", m.Idle())
	}
	return nil
}

func countWaiters(ref *refMachine) int {
	n := 0
	for _, s := range ref.sessions {
		n += len(s.waiters)
	}
	return n
}

// checkCaps checks the spec's caps on the Machine itself.
func checkCaps(m *machine, cfg machineConfig) error {
	if cfg.MaxSessions > 0 && m.Sessions() > cfg.MaxSessions {
		return fmt.Errorf("%d sessions, cap %d", m.Sessions(), cfg.MaxSessions)
	}
	if cfg.MaxLocks > 0 && m.Locks() > cfg.MaxLocks {
		return fmt.Errorf("%d locks, cap %d", m.Locks(), cfg.MaxLocks)
	}
	perAddr := map[netip.Addr]int{}
	for id, s := range m.sessions {
		if cfg.MaxLocksPerSession > 0 && !s.draining && s.nlocks > cfg.MaxLocksPerSession {
			return fmt.Errorf("session %x holds %d locks, cap %d", id, s.nlocks, cfg.MaxLocksPerSession)
		}
		if s.peer != nil {
			perAddr[s.peer.Addr.Addr().Unmap()]++
		}
	}
	for a, n := range perAddr {
		if cfg.MaxSessionsPerAddr > 0 && n > cfg.MaxSessionsPerAddr {
			return fmt.Errorf("%d sessions from %v, cap %d", n, a, cfg.MaxSessionsPerAddr)
		}
		if m.perAddr[a] != n {
			return fmt.Errorf("per-address count of %v: %d, sessions show %d", a, m.perAddr[a], n)
		}
	}
	if len(m.perAddr) != len(perAddr) {
		return fmt.Errorf("per-address table has %d addresses, sessions show %d", len(m.perAddr), len(perAddr))
	}
	return nil
}

// simPeers are the far ends CONNECTs come from: two ports of one IP (once IPv4-mapped),
// another IP, and none.
var simPeers = []*peerInfo{
	{Addr: netip.MustParseAddrPort("10.0.0.1:1000")},
	{Addr: netip.MustParseAddrPort("10.0.0.1:2000")},
	{Addr: netip.MustParseAddrPort("[::ffff:10.0.0.1]:3000")},
	{Addr: netip.MustParseAddrPort("[2001:db8::2]:1000")},
	nil,
}

// simTTLs covers the TTL checks and expiries: 0 and over MaxTTL are refused.
var simTTLs = []uint32{0, 1, 20, 100, 300, 500, 501}

// nextCommand draws one client command: a new request, a duplicate of an earlier one
// (a retransmission, possibly stale), a CONNECT, or a request of an unknown session.
func nextCommand(p *prog, clients *[]*simClient, tag int32) (command, *simClient) {
	sel := p.byte()
	if sel < 20 || len(*clients) == 0 {
		// A new client connects, or a CONNECT is retransmitted.
		// The loop's draw: small, so that it collides with live ids and 0.
		newSession := uint64(p.pick(6))
		if sel < 10 && len(*clients) > 0 {
			cl := (*clients)[p.pick(len(*clients))]
			return command{kind: kindConnect, ID: cl.nonce, Info: []byte("h"), Tag: tag, NewSession: newSession, peerInfo: cl.peer}, cl
		}
		cl := &simClient{nonce: uint64(len(*clients)) + 1, nextID: 1, peer: simPeers[p.pick(len(simPeers))]}
		if len(*clients) >= 12 {
			cl = (*clients)[p.pick(len(*clients))]
		} else {
			*clients = append(*clients, cl)
		}
		info := []byte("host")
		if p.byte() == 255 {
			info = make([]byte, wire.MaxIsolationInfo+1)
		}
		return command{kind: kindConnect, ID: cl.nonce, Info: info, Tag: tag, NewSession: newSession, peerInfo: cl.peer}, cl
	}
	cl := (*clients)[p.pick(len(*clients))]
	session := cl.session
	if sel < 25 {
		session = uint64(p.byte()) << 32 // a session nobody has (or a forged one)
	}
	if sel < 60 && len(cl.sent) > 0 {
		// A duplicate: a retransmission or a late copy, with the floor of the time it
		// was sent or the current one.
		c := cl.sent[len(cl.sent)-1-p.pick(min(len(cl.sent), 16))]
		if p.byte()&1 == 0 {
			c.Floor = cl.floor
		}
		c.Tag = tag
		return c, cl
	}
	c := command{Session: session, Floor: cl.floor, Tag: tag}
	kinds := []kind{kindLock, kindLock, kindLock, kindLockMany, kindUpdate, kindUnlock, kindUnlock, kindTouch, kindPing, kindDisconnect, kindUnlockAll, kind(200)}
	c.kind = kinds[p.pick(len(kinds))]
	if c.kind == kindDisconnect && p.byte() < 200 {
		c.kind = kindTouch // keep sessions alive most of the time
	}
	if c.kind == kindUnlockAll && p.byte() < 200 {
		c.kind = kindLock
	}
	c.Admin = c.kind == kindUnlockAll && p.byte()&1 == 0
	c.ID = cl.nextID
	cl.nextID++
	c.Key = []byte(simKeys[p.pick(len(simKeys))])
	c.TTLMs = simTTLs[p.pick(len(simTTLs))]
	if c.kind == kindLock || c.kind == kindLockMany {
		if w := p.byte(); w < 128 {
			c.Wait, c.WaitMs = true, []uint32{0, 0, 0, 50, 300, 1000}[w%6]
		}
	}
	if c.kind == kindLockMany {
		// 1 to 3 keys, mostly distinct and valid; "" and duplicates are bad requests.
		var keys []string
		for n, tries := 1+p.pick(3), 0; len(keys) < n && tries < 8; tries++ {
			k := simKeys[p.pick(len(simKeys))]
			if slices.Contains(keys, k) && p.byte() < 240 {
				continue
			}
			if k == "" && p.byte() < 200 {
				continue
			}
			keys = append(keys, k)
		}
		if len(keys) == 0 {
			keys = []string{"a"}
		}
		c.Key, c.KeyCount = manyKeys(keys...), uint8(len(keys))
	}
	if c.kind == kindUpdate || c.kind == kindUnlock {
		if len(cl.lockIDs) > 0 && p.byte() < 220 {
			i := len(cl.lockIDs) - 1 - p.pick(min(len(cl.lockIDs), 4))
			c.LockID = cl.lockIDs[i]
			if p.byte() < 200 {
				c.Key = []byte(cl.lockKey[i]) // mostly the lock's own key
			}
		} else {
			c.LockID = uint64(p.pick(int(cl.nextID) + 1))
		}
	}
	// The ack floor moves up now and then, to just past some completed id.
	if p.byte() < 30 && cl.nextID > cl.floor+1 {
		cl.floor += 1 + uint64(p.pick(int(cl.nextID-cl.floor)))
		c.Floor = cl.floor
	}
	cl.sent = append(cl.sent, c)
	return c, cl
}

func fmtCmd(c command) string {
	names := map[kind]string{kindConnect: "CONNECT", kindPing: "PING", kindTouch: "TOUCH", kindDisconnect: "DISCONNECT",
		kindLock: "LOCK", kindUpdate: "UPDATE", kindUnlock: "UNLOCK", kindUnlockAll: "UNLOCKALL", kindIsolationDone: "ISOLATION-DONE",
		kindLockMany: "LOCKMANY"}
	n, ok := names[c.kind]
	if !ok {
		n = fmt.Sprintf("KIND(%d)", c.kind)
	}
	key := fmt.Sprintf("%q", c.Key)
	if c.kind == kindLockMany {
		key = fmt.Sprintf("%q", reqKeys(c))
	}
	wait := ""
	if c.Wait {
		wait = fmt.Sprintf(" wait=%dms", c.WaitMs)
	}
	return fmt.Sprintf("[%d] %s sess=%x floor=%d id=%d lock=%d ttl=%d key=%s%s new=%d peer=%v admin=%v", c.Tag, n, c.Session, c.Floor, c.ID, c.LockID, c.TTLMs, key, wait, c.NewSession, c.peerInfo != nil, c.Admin)
}

func fmtRes(r result) string {
	return fmt.Sprintf("[%d] op=%#x code=%d sess=%x id=%d fence=%d", r.Tag, r.Op, r.Code, r.Session, r.ID, r.Fence)
}

func fmtResults(rs []result) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(fmtRes(r) + "; ")
	}
	return b.String()
}

// simSeeds is how many random programs the normal test run simulates; NETMUTEX_SOAK
// raises it.
func simSeeds() int {
	if os.Getenv("NETMUTEX_SOAK") != "" {
		return 20000
	}
	return 600
}

// TestSimulateMachine is the bounded run of the simulation: random programs from fixed
// seeds, so a failure replays.
func TestSimulateMachine(t *testing.T) {
	for seed := 0; seed < simSeeds(); seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
		program := make([]byte, 200+rng.IntN(6000))
		for i := range program {
			program[i] = byte(rng.UintN(256))
		}
		if err := simulate(program); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
	t.Logf("exercised: %+v", simSeen)
	if simSeen.queued == 0 || simSeen.pushed == 0 || simSeen.pushedMany == 0 || simSeen.cancelled == 0 || simSeen.grantedMany == 0 {
		t.Fatalf("the simulation no longer exercises waiting: %+v", simSeen)
	}
}

// FuzzMachine lets the fuzzer write the programs.
func FuzzMachine(f *testing.F) {
	for seed := 0; seed < 8; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 0xf022))
		program := make([]byte, 512)
		for i := range program {
			program[i] = byte(rng.UintN(256))
		}
		program[0] = byte(seed) // each configuration
		f.Add(program)
	}
	f.Fuzz(func(t *testing.T, program []byte) {
		if err := simulate(program); err != nil {
			t.Fatal(err)
		}
	})
}
