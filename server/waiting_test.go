package server

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// Machine tests of waiting (docs/PROTOCOL.md, Waiting): FIFO queues, pushed grants,
// cancellation, bounds, session ends, lock-delay, LOCKMANY and the caps.

func waitCmd(sess, id uint64, ttlMs, waitMs uint32, key string) command {
	c := lockCmd(sess, id, ttlMs, key)
	c.Wait, c.WaitMs = true, waitMs
	return c
}

// manyKeys is a LOCKMANY key list as on the wire.
func manyKeys(keys ...string) []byte {
	var b []byte
	for _, k := range keys {
		b = append(b, byte(len(k)))
		b = append(b, k...)
	}
	return b
}

func manyCmd(sess, id uint64, ttlMs uint32, wait bool, waitMs uint32, keys ...string) command {
	return command{kind: kindLockMany, Session: sess, ID: id, TTLMs: ttlMs, Wait: wait, WaitMs: waitMs,
		Key: manyKeys(keys...), KeyCount: uint8(len(keys))}
}

// split separates the pushed grants (Tag -1) from the answers to commands.
func split(rs []result) (answers, pushed []result) {
	for _, r := range rs {
		if r.Tag < 0 {
			pushed = append(pushed, r)
		} else {
			answers = append(answers, r)
		}
	}
	return answers, pushed
}

// stepAnswer applies c and returns its answer and the grants pushed meanwhile.
func (s *sim) stepAnswer(c command) (result, []result) {
	s.t.Helper()
	answers, pushed := split(s.step(c))
	require.Len(s.t, answers, 1, "answers to %+v", c)
	return answers[0], pushed
}

// wantPush checks that exactly one grant was pushed, to (session, id), and returns its fence.
func wantPush(t *testing.T, pushed []result, session, id uint64) uint64 {
	t.Helper()
	require.Len(t, pushed, 1, "pushed grants: %+v", pushed)
	p := pushed[0]
	require.Equal(t, wire.OpOK, p.Op, "%+v", p)
	require.Equal(t, [2]uint64{session, id}, [2]uint64{p.Session, p.ID}, "pushed to (session, id)")
	require.NotZero(t, p.Fence)
	return p.Fence
}

func TestWaitFIFO(t *testing.T) {
	s := newSim(t, nil)
	a, b, c, d := s.connect(1), s.connect(2), s.connect(3), s.connect(4)
	r := s.one(lockCmd(a, 1, 10000, "k"))
	wantOp(t, r, wire.OpOK)
	for _, w := range []uint64{b, c, d} {
		wantOp(t, s.one(waitCmd(w, 7, 10000, 0, "k")), wire.OpQueued)
	}
	wantOp(t, s.one(waitCmd(c, 7, 10000, 0, "k")), wire.OpQueued) // a copy: QUEUED again
	require.Equal(t, [][2]uint64{{b, 7}, {c, 7}, {d, 7}}, s.m.Queue("k"))
	wantOp(t, s.one(lockCmd(a, 2, 10000, "k")), wire.OpLocked) // a try-LOCK: waiters first
	prev := r.Fence
	holder, id := a, uint64(1)
	for _, w := range []uint64{b, c, d} {
		ans, pushed := s.stepAnswer(unlockCmd(holder, 100, id, "k"))
		wantOp(t, ans, wire.OpOK)
		f := wantPush(t, pushed, w, 7)
		require.Greater(t, f, prev, "fences increase")
		wantHolder(t, s.m, "k", w, 7, f)
		again := s.one(waitCmd(w, 7, 10000, 0, "k")) // the grant again, to a copy
		wantOp(t, again, wire.OpOK)
		require.Equal(t, f, again.Fence)
		holder, id, prev = w, 7, f
	}
	ans, pushed := s.stepAnswer(unlockCmd(d, 100, 7, "k"))
	wantOp(t, ans, wire.OpOK)
	require.Empty(t, pushed)
	wantFree(t, s.m, "k", "the queue is empty")
	require.Zero(t, s.m.Waiters())
	wantErr(t, s.one(waitCmd(d, 7, 10000, 0, "k")), wire.CodeStale) // granted, released
}

// TestWaitCancelBeforeGrant: UNLOCK of a queued LOCK's id takes it out of the queue; a
// late copy is answered LOCKED, never queued or granted again.
func TestWaitCancelBeforeGrant(t *testing.T) {
	s := newSim(t, nil)
	a, b, c := s.connect(1), s.connect(2), s.connect(3)
	wantOp(t, s.one(lockCmd(a, 1, 10000, "k")), wire.OpOK)
	wantOp(t, s.one(waitCmd(b, 5, 10000, 0, "k")), wire.OpQueued)
	wantOp(t, s.one(waitCmd(c, 5, 10000, 0, "k")), wire.OpQueued)
	wantOp(t, s.one(unlockCmd(b, 6, 5, "k")), wire.OpOK)
	require.Equal(t, [][2]uint64{{c, 5}}, s.m.Queue("k"))
	wantOp(t, s.one(waitCmd(b, 5, 10000, 0, "k")), wire.OpLocked)
	_, pushed := s.stepAnswer(unlockCmd(a, 2, 1, "k"))
	wantPush(t, pushed, c, 5)
	wantOp(t, s.one(waitCmd(b, 5, 10000, 0, "k")), wire.OpLocked)
}

// TestWaitCancelGrantInFlight: the waiter's UNLOCK arrives after its grant was pushed
// (the client gave up before learning of it): the lock is released and the next waiter
// gets it; a copy of the LOCK is STALE.
func TestWaitCancelGrantInFlight(t *testing.T) {
	s := newSim(t, nil)
	a, b, c := s.connect(1), s.connect(2), s.connect(3)
	wantOp(t, s.one(lockCmd(a, 1, 10000, "k")), wire.OpOK)
	wantOp(t, s.one(waitCmd(b, 5, 10000, 0, "k")), wire.OpQueued)
	wantOp(t, s.one(waitCmd(c, 9, 10000, 0, "k")), wire.OpQueued)
	_, pushed := s.stepAnswer(unlockCmd(a, 2, 1, "k"))
	wantPush(t, pushed, b, 5) // lost on its way, say
	ans, pushed := s.stepAnswer(unlockCmd(b, 6, 5, "k"))
	wantOp(t, ans, wire.OpOK)
	f := wantPush(t, pushed, c, 9)
	wantHolder(t, s.m, "k", c, 9, f)
	wantErr(t, s.one(waitCmd(b, 5, 10000, 0, "k")), wire.CodeStale)
}

// TestWaitIsolationHandsOnAfterDone: the key of a holder whose lock expired goes to the
// next waiter only once its isolation command has finished; without a command, at once.
func TestWaitIsolationHandsOnAfterDone(t *testing.T) {
	s := newSim(t, nil)
	a, b := s.connect(1), s.connect(2)
	r := s.one(lockCmd(a, 1, 100, "k"))
	wantOp(t, r, wire.OpOK)
	wantOp(t, s.one(waitCmd(b, 3, 10000, 0, "k")), wire.OpQueued)
	s.now += 200 * ms
	require.Empty(t, s.step(), "no grant while the isolation command runs")
	require.Len(t, s.iso, 1)
	wantHolder(t, s.m, "k", a, 1, r.Fence)
	s.now += 5000 * ms
	wantOp(t, s.one(waitCmd(b, 3, 10000, 0, "k")), wire.OpQueued)
	out := s.step(command{kind: kindIsolationDone, Session: a, Tag: -1})
	f := wantPush(t, out, b, 3)
	wantHolder(t, s.m, "k", b, 3, f)

	s = newSim(t, func(c *machineConfig) { c.Isolate = false })
	a, b = s.connect(1), s.connect(2)
	wantOp(t, s.one(lockCmd(a, 1, 100, "k")), wire.OpOK)
	wantOp(t, s.one(waitCmd(b, 3, 10000, 0, "k")), wire.OpQueued)
	s.now += 200 * ms
	wantPush(t, s.step(), b, 3)
}

// TestWaitLockDelay: waiting LOCKs during the lock-delay are queued, not refused; the
// first Apply at or after its end grants the heads, in order.
func TestWaitLockDelay(t *testing.T) {
	s := newSim(t, func(c *machineConfig) { c.LockDelayUntil = 2000 * ms })
	a, b, c := s.connect(1), s.connect(2), s.connect(3)
	wantOp(t, s.one(waitCmd(a, 1, 10000, 0, "k")), wire.OpQueued)
	wantOp(t, s.one(waitCmd(b, 1, 10000, 0, "k")), wire.OpQueued)
	wantOp(t, s.one(manyCmd(c, 1, 10000, true, 0, "x", "y")), wire.OpQueued)
	wantOp(t, s.one(lockCmd(c, 2, 10000, "k")), wire.OpLocked)
	wantErr(t, s.one(lockCmd(c, 3, 10000, "z")), wire.CodeLockDelay)
	s.now = 1999 * ms
	require.Empty(t, s.step())
	s.now = 2000 * ms
	out := s.step()
	require.Len(t, out, 2, "%+v", out)
	assert.Equal(t, [2]uint64{a, 1}, [2]uint64{out[0].Session, out[0].ID})
	assert.Equal(t, [2]uint64{c, 1}, [2]uint64{out[1].Session, out[1].ID})
	wantHolder(t, s.m, "x", c, 1, out[1].Fence)
	wantHolder(t, s.m, "y", c, 1, out[1].Fence+1)
	_, pushed := s.stepAnswer(unlockCmd(a, 2, 1, "k"))
	wantPush(t, pushed, b, 1)
}

// TestWaitNoFences: a grant to a waiter never uses a fence that is not durable; it waits
// for the loop's next reservation.
func TestWaitNoFences(t *testing.T) {
	cfg := machineConfig{MaxTTL: int64(60000 * ms)}
	m := newMachine(cfg)
	m.SetFenceLimit(m.NextFence() + 1)
	out, _ := m.Apply(0, []command{{kind: kindConnect, ID: 1, NewSession: 10}, {kind: kindConnect, ID: 2, NewSession: 20}}, nil, nil)
	require.Len(t, out, 2)
	out, _ = m.Apply(1, []command{lockCmd(10, 1, 1000, "k"), waitCmd(20, 1, 1000, 0, "k"), unlockCmd(10, 2, 1, "k")}, nil, nil)
	require.Len(t, out, 3, "%+v", out)
	wantOp(t, out[0], wire.OpOK)
	wantOp(t, out[1], wire.OpQueued)
	wantFree(t, m, "k", "no fence left")
	out, _ = m.Apply(2, nil, nil, nil)
	require.Empty(t, out)
	m.SetFenceLimit(m.NextFence() + 10)
	out, _ = m.Apply(3, nil, nil, nil)
	wantPush(t, out, 20, 1)
}

// TestWaitBound: a waiter whose bound passed leaves the queue, answered LOCKED for good.
func TestWaitBound(t *testing.T) {
	s := newSim(t, nil)
	a, b, c := s.connect(1), s.connect(2), s.connect(3)
	wantOp(t, s.one(lockCmd(a, 1, 10000, "k")), wire.OpOK)
	wantOp(t, s.one(waitCmd(b, 1, 10000, 100, "k")), wire.OpQueued)
	wantOp(t, s.one(waitCmd(c, 1, 10000, 0, "k")), wire.OpQueued)
	s.now += 100 * ms
	require.Empty(t, s.step())
	require.Equal(t, [][2]uint64{{c, 1}}, s.m.Queue("k"))
	wantOp(t, s.one(waitCmd(b, 1, 10000, 100, "k")), wire.OpLocked)
	_, pushed := s.stepAnswer(unlockCmd(a, 2, 1, "k"))
	wantPush(t, pushed, c, 1)
}

// TestWaitSessionEnd: the waiters of a session that disconnects, times out or is
// isolated leave every queue.
func TestWaitSessionEnd(t *testing.T) {
	s := newSim(t, nil)
	a, b, c, d := s.connect(1), s.connect(2), s.connect(3), s.connect(4)
	wantOp(t, s.one(lockCmd(a, 1, 60000, "k")), wire.OpOK)
	wantOp(t, s.one(lockCmd(d, 1, 100, "held")), wire.OpOK)
	wantOp(t, s.one(waitCmd(b, 1, 10000, 0, "k")), wire.OpQueued)
	wantOp(t, s.one(manyCmd(c, 1, 10000, true, 0, "k", "j")), wire.OpQueued)
	wantOp(t, s.one(waitCmd(d, 2, 10000, 0, "k")), wire.OpQueued)
	require.Len(t, s.m.Queue("k"), 3)
	wantOp(t, s.one(command{kind: kindDisconnect, Session: b, ID: 2}), wire.OpDisconnected)
	s.now += 200 * ms // d's lock expires: d is isolated
	s.step()
	require.True(t, s.m.Isolated(d))
	require.Equal(t, [][2]uint64{{c, 1}}, s.m.Queue("k"))
	require.Equal(t, [][2]uint64{{c, 1}}, s.m.Queue("j"))
	s.now += 15000 * ms // c and a time out (a is isolated: it holds k)
	s.one(command{kind: kindTouch, Session: a, ID: 2})
	s.step()
	require.Zero(t, s.m.Waiters())
	require.Empty(t, s.m.Queue("k"))
}

// TestLockMany: all keys or none, consecutive fences, UPDATE and UNLOCK by key, copies.
func TestLockMany(t *testing.T) {
	s := newSim(t, nil)
	a, b := s.connect(1), s.connect(2)
	r := s.one(manyCmd(a, 5, 10000, false, 0, "x", "y", "z"))
	wantOp(t, r, wire.OpOK)
	for i, k := range []string{"x", "y", "z"} {
		wantHolder(t, s.m, k, a, 5, r.Fence+uint64(i))
	}
	again := s.one(manyCmd(a, 5, 10000, false, 0, "x", "y", "z"))
	wantOp(t, again, wire.OpOK)
	require.Equal(t, r.Fence, again.Fence)
	u := s.one(updateCmd(a, 6, 5, 20000, "y"))
	wantOp(t, u, wire.OpOK)
	require.Equal(t, r.Fence+1, u.Fence)
	wantOp(t, s.one(unlockCmd(a, 7, 5, "y")), wire.OpOK)
	wantFree(t, s.m, "y", "unlocked")
	wantHolder(t, s.m, "x", a, 5, r.Fence)
	wantErr(t, s.one(manyCmd(a, 5, 10000, false, 0, "x", "y", "z")), wire.CodeStale)
	// None: one key held by another.
	wantOp(t, s.one(manyCmd(b, 1, 10000, false, 0, "y", "z")), wire.OpLocked)
	wantFree(t, s.m, "y", "all or none")
	wantErr(t, s.one(manyCmd(b, 2, 10000, false, 0, "q", "q")), wire.CodeBadRequest)
	wantErr(t, s.one(command{kind: kindLockMany, Session: b, ID: 3, TTLMs: 10, Key: []byte{1, 'a', 0}, KeyCount: 2}), wire.CodeBadRequest)
	wantErr(t, s.one(manyCmd(b, 4, 0, false, 0, "q")), wire.CodeBadTTL)
}

// TestLockManyBeforeLaterSingles: a key whose head is a multi-key waiter is kept for it:
// single-key waiters behind it wait, a try-LOCK gets LOCKED.
func TestLockManyBeforeLaterSingles(t *testing.T) {
	s := newSim(t, nil)
	a, m, c := s.connect(1), s.connect(2), s.connect(3)
	wantOp(t, s.one(lockCmd(a, 1, 10000, "k1")), wire.OpOK)
	wantOp(t, s.one(manyCmd(m, 1, 10000, true, 0, "k1", "k2")), wire.OpQueued)
	wantOp(t, s.one(waitCmd(c, 1, 10000, 0, "k2")), wire.OpQueued)
	wantOp(t, s.one(lockCmd(c, 2, 10000, "k2")), wire.OpLocked)
	wantFree(t, s.m, "k2", "reserved for the LOCKMANY")
	_, pushed := s.stepAnswer(unlockCmd(a, 2, 1, "k1"))
	f := wantPush(t, pushed, m, 1)
	wantHolder(t, s.m, "k1", m, 1, f)
	wantHolder(t, s.m, "k2", m, 1, f+1)
	_, pushed = s.stepAnswer(unlockCmd(m, 2, 1, "k2"))
	wantPush(t, pushed, c, 1)
}

// TestLockManyNoDeadlock: two multi-key waiters over the same keys named in opposite
// orders are in the same order in both queues: the first is granted both, then the other.
func TestLockManyNoDeadlock(t *testing.T) {
	s := newSim(t, nil)
	a, b, m1, m2 := s.connect(1), s.connect(2), s.connect(3), s.connect(4)
	wantOp(t, s.one(lockCmd(a, 1, 10000, "k1")), wire.OpOK)
	wantOp(t, s.one(lockCmd(b, 1, 10000, "k2")), wire.OpOK)
	wantOp(t, s.one(manyCmd(m1, 1, 10000, true, 0, "k1", "k2")), wire.OpQueued)
	wantOp(t, s.one(manyCmd(m2, 1, 10000, true, 0, "k2", "k1")), wire.OpQueued)
	_, pushed := s.stepAnswer(unlockCmd(a, 2, 1, "k1"))
	require.Empty(t, pushed)
	_, pushed = s.stepAnswer(unlockCmd(b, 2, 1, "k2"))
	wantPush(t, pushed, m1, 1)
	_, pushed = s.stepAnswer(unlockCmd(m1, 2, 1, "k2"))
	require.Empty(t, pushed, "m2 waits for k1 too")
	_, pushed = s.stepAnswer(unlockCmd(m1, 3, 1, "k1"))
	f := wantPush(t, pushed, m2, 1)
	wantHolder(t, s.m, "k2", m2, 1, f)
	wantHolder(t, s.m, "k1", m2, 1, f+1)
}

// TestWaitCaps: waiters per key and per session (TOO_MANY_WAITERS), and waiting keys
// counted as held against the lock caps; each refusal final for its id.
func TestWaitCaps(t *testing.T) {
	s := newSim(t, func(c *machineConfig) {
		c.MaxWaitersPerKey, c.MaxWaitersPerSession, c.MaxLocksPerSession = 2, 2, 3
	})
	a, b, c, d := s.connect(1), s.connect(2), s.connect(3), s.connect(4)
	wantOp(t, s.one(lockCmd(a, 1, 10000, "k")), wire.OpOK)
	wantOp(t, s.one(lockCmd(a, 2, 10000, "j")), wire.OpOK)
	wantOp(t, s.one(waitCmd(b, 1, 10000, 0, "k")), wire.OpQueued)
	wantOp(t, s.one(waitCmd(c, 1, 10000, 0, "k")), wire.OpQueued)
	wantErr(t, s.one(waitCmd(d, 1, 10000, 0, "k")), wire.CodeTooManyWaiters)
	wantErr(t, s.one(waitCmd(d, 1, 10000, 0, "k")), wire.CodeTooManyWaiters)
	wantOp(t, s.one(waitCmd(b, 2, 10000, 0, "j")), wire.OpQueued)
	wantErr(t, s.one(waitCmd(b, 3, 10000, 0, "j")), wire.CodeTooManyWaiters)
	// b waits for 2 keys, may hold 3: a LOCKMANY of 2 more is over the cap.
	wantErr(t, s.one(manyCmd(b, 4, 10000, false, 0, "p", "q")), wire.CodeTooManyLocks)
	wantOp(t, s.one(lockCmd(b, 5, 10000, "p")), wire.OpOK)
	wantErr(t, s.one(lockCmd(b, 6, 10000, "q")), wire.CodeTooManyLocks)
	// Both of b's waiters granted: b holds 3, its cap.
	s.step(unlockCmd(a, 3, 1, "k"), unlockCmd(a, 4, 2, "j"))
	_, _, _, ok := s.m.Holder("k")
	require.True(t, ok)
	require.Equal(t, 3, s.m.sessions[b].nlocks)
}

// TestWaitUnlockAll: UNLOCKALL isolates the holders (their waiters leave) and hands every
// key on to the waiters of other sessions.
func TestWaitUnlockAll(t *testing.T) {
	s := newSim(t, func(c *machineConfig) { c.Isolate = false })
	a, b, c := s.connect(1), s.connect(2), s.connect(3)
	wantOp(t, s.one(lockCmd(a, 1, 10000, "k")), wire.OpOK)
	wantOp(t, s.one(lockCmd(b, 1, 10000, "j")), wire.OpOK)
	wantOp(t, s.one(waitCmd(b, 2, 10000, 0, "k")), wire.OpQueued)
	wantOp(t, s.one(waitCmd(c, 1, 10000, 0, "k")), wire.OpQueued)
	ans, pushed := s.stepAnswer(command{kind: kindUnlockAll, Session: c, ID: 2, Admin: true})
	wantOp(t, ans, wire.OpPong)
	f := wantPush(t, pushed, c, 1)
	wantHolder(t, s.m, "k", c, 1, f)
	wantFree(t, s.m, "j", "released")
}

// TestMachineNextDue: NextDue names the first time at which time alone changes the
// machine (a wait bound, a lease, a session's time-out), and an Apply of only the time
// just before it changes nothing: a cluster leader logs no empty entry until then.
func TestMachineNextDue(t *testing.T) {
	s := newSim(t, nil)
	require.Equal(t, int64(math.MaxInt64), s.m.NextDue(), "no session, no lock")
	a := s.connect(1)
	require.Equal(t, s.now+15000*ms, s.m.NextDue(), "a's time-out")
	wantOp(t, s.one(lockCmd(a, 1, 500, "k")), wire.OpOK)
	leaseEnd := s.now + 500*ms
	b := s.connect(2)
	wantOp(t, s.one(waitCmd(b, 1, 10000, 200, "k")), wire.OpQueued)
	boundEnd := s.now + 200*ms
	require.Equal(t, boundEnd, s.m.NextDue(), "b's wait bound first")

	s.now = boundEnd - 1
	require.Empty(t, s.step())
	require.Equal(t, [][2]uint64{{b, 1}}, s.m.Queue("k"), "the bound has not passed")
	s.now = boundEnd
	s.step()
	require.Empty(t, s.m.Queue("k"), "the bound passed")
	require.Equal(t, leaseEnd, s.m.NextDue(), "then a's lease")

	s.now = leaseEnd - 1
	s.step()
	require.False(t, s.m.Isolated(a), "the lease has not ended")
	s.now = leaseEnd
	s.step()
	require.True(t, s.m.Isolated(a), "the lease ended with a still holding k")
	require.Len(t, s.iso, 1, "a's isolation asked")

	// Only the time-outs remain: b's (its last command) is the first.
	require.Equal(t, boundEnd-200*ms+15000*ms, s.m.NextDue(), "b's time-out")
	s.now = s.m.NextDue() - 1
	s.step()
	require.Equal(t, 2, s.m.Sessions())
	s.now++
	s.step()
	require.Equal(t, 1, s.m.Sessions(), "b timed out")
}
