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
	peer                *Peer
	lastSeen            int64
	touched             int64 // LRU order: the sequence number of the last touch
	floor               uint64
	isolated, isolating bool
	released            map[uint64]answer // LOCK id answered for good → how
}

// answer is how a LOCK was answered for good.
type answer uint8

const (
	answerReleased answer = iota // granted, then released: copies get STALE
	answerLocked                 // refused with LOCKED: copies get LOCKED
	answerDelayed                // LOCK_DELAY: copies get LOCK_DELAY (lockDelayIsFinal)
	answerTooMany                // TOO_MANY_LOCKS: copies get it again
	answerFull                   // SERVER_FULL: copies get it again
)

// lockDelayIsFinal says that the Machine remembers LOCKs answered LOCK_DELAY so that
// their copies are not granted late (TestMachineLockDelayDuplicateNotGrantedLate).
const lockDelayIsFinal = true

type refLock struct {
	sess     *refSession
	lockID   uint64
	fence    uint64
	deadline int64
}

type refMachine struct {
	cfg                MachineConfig
	sessions           map[uint64]*refSession
	nonces             map[uint64]*refSession
	locks              map[string]*refLock // held keys only
	fence, fenceEnd    uint64
	grants, isolations uint64
	seq                int64
	effects            []Isolation
	serials            uint64
	// answeredBy: for each LOCK of the last apply, by Tag, the serial of the session
	// that answered it (the simulation draws session ids that collide, so an id may
	// name a session that ended and then another).
	answeredBy map[int32]uint64
}

func newRef(cfg MachineConfig) *refMachine {
	if cfg.FirstFence == 0 {
		cfg.FirstFence = 1
	}
	return &refMachine{cfg: cfg, sessions: map[uint64]*refSession{}, nonces: map[uint64]*refSession{},
		locks: map[string]*refLock{}, fence: cfg.FirstFence, fenceEnd: cfg.FirstFence}
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

func (m *refMachine) releaseAll(s *refSession) {
	for k, l := range m.locks {
		if l.sess == s {
			delete(m.locks, k)
		}
	}
}

func (m *refMachine) isolate(s *refSession) {
	if !s.isolated {
		s.isolated = true
		m.isolations++
		if m.cfg.Isolate {
			s.isolating = true
			m.effects = append(m.effects, Isolation{Session: s.id, Info: s.info})
		}
	}
	if !s.isolating {
		m.releaseAll(s)
	}
}

func (m *refMachine) apply(now int64, cmds []Command) ([]Result, []Isolation) {
	m.effects = nil
	m.answeredBy = map[int32]uint64{}
	// Locks whose deadline passed isolate their session, earliest first. Keys of a
	// session whose isolation command runs no longer expire.
	for {
		var first *refLock
		for _, l := range m.locks {
			if l.sess.isolating || l.deadline > now {
				continue
			}
			if first == nil || l.deadline < first.deadline {
				first = l
			}
		}
		if first == nil {
			break
		}
		m.isolate(first.sess)
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
		}
	}
	var out []Result
	for i := range cmds {
		c := &cmds[i]
		if r, ok := m.one(now, c); ok {
			r.Tag, r.ID = c.Tag, c.ID
			out = append(out, r)
		}
	}
	return out, m.effects
}

func (m *refMachine) deleteSession(s *refSession) {
	m.releaseAll(s)
	delete(m.sessions, s.id)
	delete(m.nonces, s.nonce)
}

func (m *refMachine) one(now int64, c *Command) (Result, bool) {
	switch c.Kind {
	case KindConnect:
		switch {
		case c.ID == 0:
			return Result{Op: wire.OpError, Code: wire.CodeBadRequest, Session: c.Session}, true
		case len(c.Info) > wire.MaxIsolationInfo:
			return Result{Op: wire.OpError, Code: wire.CodeBadIsolationInfo, Session: c.Session}, true
		}
		if s := m.nonces[c.ID]; s != nil {
			m.touch(s, now)
			return Result{Op: wire.OpConnected, Session: s.id}, true
		}
		full := Result{Op: wire.OpError, Code: wire.CodeTooManySessions, Session: c.Session}
		if m.cfg.MaxSessions > 0 && len(m.sessions) >= m.cfg.MaxSessions {
			return full, true
		}
		if c.Peer != nil && m.cfg.MaxSessionsPerAddr > 0 {
			n := 0
			for _, o := range m.sessions {
				if o.peer != nil && o.peer.Addr.Addr().Unmap() == c.Peer.Addr.Addr().Unmap() {
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
		s := &refSession{id: id, serial: m.serials, nonce: c.ID, info: string(c.Info), peer: c.Peer, released: map[uint64]answer{}}
		m.sessions[s.id], m.nonces[c.ID] = s, s
		m.touch(s, now)
		return Result{Op: wire.OpConnected, Session: s.id}, true
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
	if c.Kind == KindLock {
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
		return Result{}, false // below the ack floor: dropped
	}
	r := Result{Op: wire.OpOK, Session: s.id}
	if s.isolated {
		r.Op = wire.OpIsolated
		return r, true
	}
	bad := func(code wire.Code) (Result, bool) {
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
	switch c.Kind {
	case KindTouch:
		r.Op = wire.OpPong
	case KindDisconnect:
		m.deleteSession(s)
		r.Op = wire.OpDisconnected
	case KindLock:
		if len(c.Key) == 0 || c.ID == 0 {
			return bad(wire.CodeBadRequest)
		}
		if code, isBad := ttlBad(c.TTLMs); isBad {
			return bad(code)
		}
		if how, done := s.released[c.ID]; done {
			switch how {
			case answerLocked:
				r.Op = wire.OpLocked
				return r, true
			case answerDelayed:
				return bad(wire.CodeLockDelay)
			case answerTooMany:
				return bad(wire.CodeTooManyLocks)
			case answerFull:
				return bad(wire.CodeServerFull)
			}
			return bad(wire.CodeStale)
		}
		if l := m.locks[string(c.Key)]; l != nil {
			if l.sess == s && l.lockID == c.ID {
				r.Fence = l.fence
			} else {
				r.Op = wire.OpLocked
				m.addReleased(s, c.ID, answerLocked)
			}
			return r, true
		}
		if m.cfg.MaxLocksPerSession > 0 && len(m.held(s)) >= m.cfg.MaxLocksPerSession {
			m.addReleased(s, c.ID, answerTooMany)
			return bad(wire.CodeTooManyLocks)
		}
		if m.cfg.MaxLocks > 0 && len(m.locks) >= m.cfg.MaxLocks {
			m.addReleased(s, c.ID, answerFull)
			return bad(wire.CodeServerFull)
		}
		if now < m.cfg.LockDelayUntil || m.fence >= m.fenceEnd {
			if lockDelayIsFinal {
				m.addReleased(s, c.ID, answerDelayed)
			}
			return bad(wire.CodeLockDelay)
		}
		m.locks[string(c.Key)] = &refLock{sess: s, lockID: c.ID, fence: m.fence, deadline: now + int64(c.TTLMs)*1e6}
		r.Fence = m.fence
		m.fence++
		m.grants++
	case KindUpdate:
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
	case KindUnlock:
		if len(c.Key) == 0 || c.LockID == 0 {
			return bad(wire.CodeBadRequest)
		}
		l := m.locks[string(c.Key)]
		if l != nil && l.sess == s && l.lockID == c.LockID {
			delete(m.locks, string(c.Key))
			if c.LockID >= s.floor {
				m.addReleased(s, c.LockID, answerReleased)
			}
		}
	case KindUnlockAll:
		if !c.Admin {
			return bad(wire.CodeForbidden)
		}
		for _, o := range m.sessions {
			if len(m.held(o)) > 0 {
				m.isolate(o)
				m.releaseAll(o)
			}
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
	peer    *Peer  // the far end its CONNECTs come from (nil: none given)
	session uint64 // 0 before CONNECTED
	nextID  uint64
	floor   uint64
	sent    []Command // every request sent, for duplicates and stale copies
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
	cfg := MachineConfig{
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
	m := NewMachine(cfg)
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
	)
	fail := func(format string, args ...any) error {
		if len(trace) > 40 {
			trace = trace[len(trace)-40:]
		}
		return fmt.Errorf("%s\nlast steps:\n%s", fmt.Sprintf(format, args...), strings.Join(trace, "\n"))
	}
	for step := 0; step < 2000 && !p.done(); step++ {
		var cmds []Command
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
			cmds = append(cmds, Command{Kind: KindIsolationDone, Session: pending[i], Tag: -1})
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
		sortIso := func(a, b Isolation) int { return cmp.Compare(a.Session, b.Session) }
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
		// What the clients learn.
		for _, r := range got {
			c := cmds[r.Tag]
			if c.Kind == KindConnect && r.Op == wire.OpConnected {
				for _, cl := range clients {
					if cl.nonce == c.ID && cl.session == 0 {
						cl.session = r.Session
					}
				}
				if ps := ref.sessions[r.Session]; ps != nil && m.Peer(r.Session) != ps.peer {
					return fail("step %d: session %x: Peer %v, CONNECT's %v", step, r.Session, m.Peer(r.Session), ps.peer)
				}
			}
			if c.Kind != KindLock {
				continue
			}
			sender := senders[r.Tag]
			k := [3]uint64{sender.nonce, ref.answeredBy[r.Tag], r.ID}
			prev, answered := lockAnswers[k]
			switch r.Op {
			case wire.OpOK:
				// Invariants: a LOCK is granted once, with one fence, and never after it
				// was refused; fences strictly increase over all grants.
				switch {
				case r.Fence == 0:
					return fail("step %d: LOCK granted with fence 0", step)
				case answered && prev == 0:
					return fail("step %d: LOCK %d of session %x granted after it was refused", step, r.ID, r.Session)
				case answered && prev != r.Fence:
					return fail("step %d: LOCK %d of session %x granted fence %d, earlier %d", step, r.ID, r.Session, r.Fence, prev)
				case !answered && r.Fence <= maxFence && fenceOf[r.Fence] != [2]uint64{k[1], k[2]}:
					return fail("step %d: fence %d granted after %d", step, r.Fence, maxFence)
				}
				if !answered {
					maxFence = max(maxFence, r.Fence)
					fenceOf[r.Fence] = [2]uint64{k[1], k[2]}
					lockAnswers[k] = r.Fence
					sender.lockIDs = append(sender.lockIDs, r.ID)
					sender.lockKey = append(sender.lockKey, string(c.Key))
				}
			case wire.OpLocked, wire.OpError:
				// LOCKED, LOCK_DELAY and the caps are final refusals: the client gives up
				// the id.
				final := r.Op == wire.OpLocked || (lockDelayIsFinal && r.Code == wire.CodeLockDelay) ||
					r.Code == wire.CodeTooManyLocks || r.Code == wire.CodeServerFull
				if !answered && final {
					lockAnswers[k] = 0
				}
			}
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

// compareState checks every observable of the Machine against the model.
func compareState(m *Machine, ref *refMachine, keys []string, clients []*simClient) error {
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
	if m.Idle() != (len(ref.sessions) == 0 && len(ref.locks) == 0) {
		return fmt.Errorf("machine idle=%v, model disagrees", m.Idle())
	}
	return nil
}

// checkCaps checks the spec's caps on the Machine itself.
func checkCaps(m *Machine, cfg MachineConfig) error {
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
var simPeers = []*Peer{
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
func nextCommand(p *prog, clients *[]*simClient, tag int32) (Command, *simClient) {
	sel := p.byte()
	if sel < 20 || len(*clients) == 0 {
		// A new client connects, or a CONNECT is retransmitted.
		// The loop's draw: small, so that it collides with live ids and 0.
		newSession := uint64(p.pick(6))
		if sel < 10 && len(*clients) > 0 {
			cl := (*clients)[p.pick(len(*clients))]
			return Command{Kind: KindConnect, ID: cl.nonce, Info: []byte("h"), Tag: tag, NewSession: newSession, Peer: cl.peer}, cl
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
		return Command{Kind: KindConnect, ID: cl.nonce, Info: info, Tag: tag, NewSession: newSession, Peer: cl.peer}, cl
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
	c := Command{Session: session, Floor: cl.floor, Tag: tag}
	kinds := []Kind{KindLock, KindLock, KindLock, KindUpdate, KindUnlock, KindUnlock, KindTouch, KindPing, KindDisconnect, KindUnlockAll, Kind(200)}
	c.Kind = kinds[p.pick(len(kinds))]
	if c.Kind == KindDisconnect && p.byte() < 200 {
		c.Kind = KindTouch // keep sessions alive most of the time
	}
	if c.Kind == KindUnlockAll && p.byte() < 200 {
		c.Kind = KindLock
	}
	c.Admin = c.Kind == KindUnlockAll && p.byte()&1 == 0
	c.ID = cl.nextID
	cl.nextID++
	c.Key = []byte(simKeys[p.pick(len(simKeys))])
	c.TTLMs = simTTLs[p.pick(len(simTTLs))]
	if c.Kind == KindUpdate || c.Kind == KindUnlock {
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

func fmtCmd(c Command) string {
	names := map[Kind]string{KindConnect: "CONNECT", KindPing: "PING", KindTouch: "TOUCH", KindDisconnect: "DISCONNECT",
		KindLock: "LOCK", KindUpdate: "UPDATE", KindUnlock: "UNLOCK", KindUnlockAll: "UNLOCKALL", KindIsolationDone: "ISOLATION-DONE"}
	n, ok := names[c.Kind]
	if !ok {
		n = fmt.Sprintf("KIND(%d)", c.Kind)
	}
	return fmt.Sprintf("[%d] %s sess=%x floor=%d id=%d lock=%d ttl=%d key=%q new=%d peer=%v admin=%v", c.Tag, n, c.Session, c.Floor, c.ID, c.LockID, c.TTLMs, c.Key, c.NewSession, c.Peer != nil, c.Admin)
}

func fmtRes(r Result) string {
	return fmt.Sprintf("[%d] op=%#x code=%d sess=%x id=%d fence=%d", r.Tag, r.Op, r.Code, r.Session, r.ID, r.Fence)
}

func fmtResults(rs []Result) string {
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
