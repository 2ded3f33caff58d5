package server

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

const ms = int64(time.Millisecond)

// sim drives a Machine with a virtual clock.
type sim struct {
	t     *testing.T
	m     *machine
	now   int64
	iso   []isolation // isolations asked by the last step
	draws uint64      // the loop's session-id draws so far
}

// draw stands for the loop's random session id: distinct, non-zero, spread over 64 bits.
func (s *sim) draw() uint64 {
	s.draws++
	return s.draws * 0x9e3779b97f4a7c15
}

func newSim(t *testing.T, mutate func(*machineConfig)) *sim {
	cfg := machineConfig{
		MaxTTL:         int64(time.Minute),
		SessionTimeout: int64(15 * time.Second),
		Isolate:        true,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	m := newMachine(cfg)
	m.SetFenceLimit(m.NextFence() + 1<<20)
	return &sim{t: t, m: m, now: 1000 * ms}
}

// step applies cmds at the current time and returns the results.
func (s *sim) step(cmds ...command) []result {
	s.t.Helper()
	var out []result
	out, s.iso = s.m.Apply(s.now, cmds, nil, nil)
	return out
}

// one applies a single command and returns its one result.
func (s *sim) one(c command) result {
	s.t.Helper()
	out := s.step(c)
	require.Len(s.t, out, 1, "results of %+v", c)
	return out[0]
}

func (s *sim) connect(nonce uint64) uint64 {
	s.t.Helper()
	r := s.one(command{kind: kindConnect, ID: nonce, Info: []byte("host-a"), NewSession: s.draw()})
	require.Equal(s.t, wire.OpConnected, r.Op, "connect: %+v", r)
	require.Equal(s.t, nonce, r.ID, "connect: %+v", r)
	return r.Session
}

func lockCmd(sess, id uint64, ttlMs uint32, key string) command {
	return command{kind: kindLock, Session: sess, ID: id, TTLMs: ttlMs, Key: []byte(key)}
}

func unlockCmd(sess, id, lockID uint64, key string) command {
	return command{kind: kindUnlock, Session: sess, ID: id, LockID: lockID, Key: []byte(key)}
}

func updateCmd(sess, id, lockID uint64, ttlMs uint32, key string) command {
	return command{kind: kindUpdate, Session: sess, ID: id, LockID: lockID, TTLMs: ttlMs, Key: []byte(key)}
}

func wantOp(t *testing.T, r result, op wire.Op) {
	t.Helper()
	require.Equal(t, op, r.Op, "result %+v", r)
}

func wantErr(t *testing.T, r result, code wire.Code) {
	t.Helper()
	require.Equal(t, wire.OpError, r.Op, "result %+v", r)
	require.Equal(t, code, r.Code, "result %+v", r)
}

// wantHolder checks that key is held by (session, lockID) with fence.
func wantHolder(t *testing.T, m *machine, key string, session, lockID, fence uint64) {
	t.Helper()
	sess, id, f, ok := m.Holder(key)
	require.True(t, ok, "%s is free", key)
	require.Equal(t, [3]uint64{session, lockID, fence}, [3]uint64{sess, id, f}, "holder of %s: session, lock id, fence", key)
}

// wantFree checks that key is held by nobody.
func wantFree(t *testing.T, m *machine, key string, why string) {
	t.Helper()
	sess, id, f, ok := m.Holder(key)
	require.False(t, ok, "%s: %s held by session %x (lock %d, fence %d)", why, key, sess, id, f)
}

func TestMachineConnect(t *testing.T) {
	s := newSim(t, nil)
	a := s.connect(11)
	assert.Equal(t, uint64(0x9e3779b97f4a7c15), a, "the loop's draw")
	assert.Equal(t, a, s.connect(11), "retransmitted CONNECT")
	b := s.connect(12)
	assert.NotEqual(t, a, b, "second session")
	require.Equal(t, 2, s.m.Sessions())
	r := s.one(command{kind: kindConnect, ID: 13, Info: make([]byte, wire.MaxIsolationInfo+1)})
	wantErr(t, r, wire.CodeBadIsolationInfo)
	wantErr(t, s.one(command{kind: kindConnect, ID: 0}), wire.CodeBadRequest)
}

func TestMachineUnknownSession(t *testing.T) {
	s := newSim(t, nil)
	for _, k := range []kind{kindTouch, kindDisconnect, kindLock, kindUpdate, kindUnlock, kindUnlockAll} {
		r := s.one(command{kind: k, Session: 99, ID: 1, TTLMs: 10, LockID: 1, Key: []byte("k")})
		wantOp(t, r, wire.OpDisconnected)
		require.Equal(t, uint64(99), r.Session, "kind %d", k)
	}
	wantOp(t, s.one(command{kind: kindPing, ID: 5}), wire.OpPong)
	wantOp(t, s.one(command{kind: kindPing, Session: 99, ID: 5}), wire.OpPong)
}

func TestMachineGrantLockedRetransmit(t *testing.T) {
	s := newSim(t, nil)
	a, b := s.connect(1), s.connect(2)
	r := s.one(lockCmd(a, 1, 1000, "k"))
	wantOp(t, r, wire.OpOK)
	require.NotZero(t, r.Fence, "fence on grant")
	fence := r.Fence
	again := s.one(lockCmd(a, 1, 1000, "k"))
	wantOp(t, again, wire.OpOK)
	require.Equal(t, fence, again.Fence, "retransmitted LOCK")
	wantOp(t, s.one(lockCmd(b, 1, 1000, "k")), wire.OpLocked)
	wantOp(t, s.one(lockCmd(a, 2, 1000, "k")), wire.OpLocked) // same session, other id
	wantHolder(t, s.m, "k", a, 1, fence)
	wantOp(t, s.one(command{kind: kindTouch, Session: a, ID: 3}), wire.OpPong)
}

func TestMachineUnlockIdempotent(t *testing.T) {
	s := newSim(t, nil)
	a, b := s.connect(1), s.connect(2)
	wantOp(t, s.one(lockCmd(a, 1, 1000, "k")), wire.OpOK)
	wantOp(t, s.one(unlockCmd(a, 2, 1, "k")), wire.OpOK)
	wantFree(t, s.m, "k", "key still held after UNLOCK")
	nb := s.one(lockCmd(b, 1, 1000, "k"))
	wantOp(t, nb, wire.OpOK)
	// The old UNLOCK, replayed, and an UNLOCK by b's lock id from another session.
	wantOp(t, s.one(unlockCmd(a, 2, 1, "k")), wire.OpOK)
	wantOp(t, s.one(unlockCmd(a, 3, 1, "k")), wire.OpOK)
	wantHolder(t, s.m, "k", b, 1, nb.Fence) // the newer holder untouched
}

func TestMachineStaleAndFloor(t *testing.T) {
	s := newSim(t, nil)
	a := s.connect(1)
	wantOp(t, s.one(lockCmd(a, 5, 1000, "k")), wire.OpOK)
	wantOp(t, s.one(unlockCmd(a, 6, 5, "k")), wire.OpOK)
	// A duplicate of the LOCK arriving after its release must not grant again.
	wantErr(t, s.one(lockCmd(a, 5, 1000, "k")), wire.CodeStale)
	wantFree(t, s.m, "k", "stale LOCK granted")
	// Once the floor passes it, it is dropped without reply.
	c := lockCmd(a, 5, 1000, "k")
	c.Floor = 7
	require.Empty(t, s.step(c), "request below floor answered")
	// The floor never moves down, and every kind below it is dropped.
	for _, c := range []command{lockCmd(a, 6, 1000, "x"), unlockCmd(a, 3, 5, "k"), {kind: kindTouch, Session: a, ID: 2, Floor: 1}} {
		require.Empty(t, s.step(c), "%+v below floor answered", c)
	}
	wantFree(t, s.m, "x", "LOCK below floor granted")
	wantOp(t, s.one(lockCmd(a, 7, 1000, "k")), wire.OpOK)
}

// TestMachineRefusedDuplicate: a copy of a LOCK that was refused, arriving once the key
// is free, must be refused again: its client was told it holds nothing.
func TestMachineRefusedDuplicate(t *testing.T) {
	s := newSim(t, nil)
	a := s.connect(1)
	b := s.connect(2)
	wantOp(t, s.one(lockCmd(a, 1, 1000, "k")), wire.OpOK)
	wantOp(t, s.one(lockCmd(b, 1, 1000, "k")), wire.OpLocked)
	wantOp(t, s.one(unlockCmd(a, 2, 1, "k")), wire.OpOK)
	wantOp(t, s.one(lockCmd(b, 1, 1000, "k")), wire.OpLocked)
	wantFree(t, s.m, "k", "refused LOCK granted by its duplicate")
	wantOp(t, s.one(lockCmd(b, 2, 1000, "k")), wire.OpOK)
}

func TestMachineUpdate(t *testing.T) {
	s := newSim(t, nil)
	a, b := s.connect(1), s.connect(2)
	g := s.one(lockCmd(a, 1, 100, "k"))
	s.now += 80 * ms
	u := s.one(updateCmd(a, 2, 1, 100, "k"))
	wantOp(t, u, wire.OpOK)
	require.Equal(t, g.Fence, u.Fence, "UPDATE keeps the fence")
	s.now += 80 * ms // 160ms after the grant: alive thanks to the UPDATE
	s.step()
	require.False(t, s.m.Isolated(a), "lock expired despite UPDATE")
	wantHolder(t, s.m, "k", a, 1, g.Fence)
	wantErr(t, s.one(updateCmd(b, 1, 1, 100, "k")), wire.CodeNotHeld)
	wantErr(t, s.one(updateCmd(a, 3, 9, 100, "k")), wire.CodeNotHeld)
	wantErr(t, s.one(updateCmd(a, 4, 1, 100, "nope")), wire.CodeNotHeld)
	wantErr(t, s.one(updateCmd(a, 5, 1, 0, "k")), wire.CodeBadTTL)
	wantErr(t, s.one(updateCmd(a, 6, 1, 60001, "k")), wire.CodeTTLTooLong)
	wantErr(t, s.one(updateCmd(a, 7, 0, 100, "k")), wire.CodeBadRequest)
}

func TestMachineBadLock(t *testing.T) {
	s := newSim(t, nil)
	a := s.connect(1)
	wantErr(t, s.one(lockCmd(a, 1, 1000, "")), wire.CodeBadRequest)
	wantErr(t, s.one(lockCmd(a, 2, 0, "k")), wire.CodeBadTTL)
	wantErr(t, s.one(lockCmd(a, 3, 60001, "k")), wire.CodeTTLTooLong)
	wantOp(t, s.one(lockCmd(a, 4, 60000, "k")), wire.OpOK)
	wantErr(t, s.one(unlockCmd(a, 5, 4, "")), wire.CodeBadRequest)
}

func TestMachineLockDelay(t *testing.T) {
	s := newSim(t, func(c *machineConfig) { c.LockDelayUntil = 2000 * ms })
	a := s.connect(1)
	wantErr(t, s.one(lockCmd(a, 1, 1000, "k")), wire.CodeLockDelay)
	// UPDATE and UNLOCK are not delayed.
	wantErr(t, s.one(updateCmd(a, 2, 1, 1000, "k")), wire.CodeNotHeld)
	wantOp(t, s.one(unlockCmd(a, 3, 1, "k")), wire.OpOK)
	s.now = 2000 * ms
	wantOp(t, s.one(lockCmd(a, 4, 1000, "k")), wire.OpOK)
}

func TestMachineExpiryIsolation(t *testing.T) {
	s := newSim(t, nil)
	a, b := s.connect(1), s.connect(2)
	wantOp(t, s.one(lockCmd(a, 1, 100, "k")), wire.OpOK)
	wantOp(t, s.one(lockCmd(a, 2, 10000, "k2")), wire.OpOK)
	s.now += 99 * ms
	s.step()
	require.Empty(t, s.iso, "isolated before the deadline")
	require.False(t, s.m.Isolated(a), "isolated before the deadline")
	s.now += 1 * ms
	s.step()
	require.Equal(t, []isolation{{Session: a, Info: "host-a"}}, s.iso)
	require.True(t, s.m.Isolated(a))
	wantOp(t, s.one(command{kind: kindTouch, Session: a, ID: 3}), wire.OpIsolated)
	wantOp(t, s.one(command{kind: kindDisconnect, Session: a, ID: 4}), wire.OpIsolated)
	// Both keys stay unavailable while the command runs, whatever the time.
	s.now += int64(10 * time.Second)
	for _, k := range []string{"k", "k2"} {
		wantOp(t, s.one(lockCmd(b, uint64(len(k)), 1000, k)), wire.OpLocked)
	}
	require.Empty(t, s.iso, "isolation asked twice")
	s.step(command{kind: kindIsolationDone, Session: a})
	for _, k := range []string{"k", "k2"} {
		wantFree(t, s.m, k, "after IsolationDone")
	}
	wantOp(t, s.one(lockCmd(b, 10, 1000, "k")), wire.OpOK)
	wantOp(t, s.one(command{kind: kindTouch, Session: a, ID: 5}), wire.OpIsolated)
	require.Equal(t, uint64(1), s.m.Isolations())
}

func TestMachineExpiryWithoutCommand(t *testing.T) {
	s := newSim(t, func(c *machineConfig) { c.Isolate = false })
	a, b := s.connect(1), s.connect(2)
	wantOp(t, s.one(lockCmd(a, 1, 100, "k")), wire.OpOK)
	s.now += 100 * ms
	s.step()
	require.Empty(t, s.iso, "isolation asked without a command")
	wantOp(t, s.one(lockCmd(b, 1, 100, "k")), wire.OpOK)
	wantOp(t, s.one(command{kind: kindTouch, Session: a, ID: 3}), wire.OpIsolated)
}

func TestMachineSessionTimeout(t *testing.T) {
	s := newSim(t, func(c *machineConfig) { c.SessionTimeout = 1000 * ms })
	idle := s.connect(1)
	holder := s.connect(2)
	alive := s.connect(3)
	wantOp(t, s.one(lockCmd(holder, 1, 60000, "k")), wire.OpOK)
	for i := 0; i < 4; i++ {
		s.now += 300 * ms
		wantOp(t, s.one(command{kind: kindTouch, Session: alive, ID: uint64(i + 1)}), wire.OpPong)
	}
	// 1200ms of silence: idle is gone, holder is isolated, alive stays.
	wantOp(t, s.one(command{kind: kindTouch, Session: idle, ID: 1}), wire.OpDisconnected)
	require.True(t, s.m.Isolated(holder), "silent holder not isolated")
	_, _, _, held := s.m.Holder("k")
	require.True(t, held, "key of an isolating session released before the command ended")
	wantOp(t, s.one(command{kind: kindTouch, Session: alive, ID: 9}), wire.OpPong)
	s.step(command{kind: kindIsolationDone, Session: holder})
	wantFree(t, s.m, "k", "after IsolationDone")
	// One more timeout of silence and the isolated session is forgotten.
	s.now += 600 * ms
	wantOp(t, s.one(command{kind: kindTouch, Session: alive, ID: 10}), wire.OpPong)
	s.now += 600 * ms
	wantOp(t, s.one(command{kind: kindTouch, Session: alive, ID: 11}), wire.OpPong)
	require.Equal(t, 1, s.m.Sessions())
}

func TestMachineUnlockAll(t *testing.T) {
	s := newSim(t, nil)
	a, b, op := s.connect(1), s.connect(2), s.connect(3)
	wantOp(t, s.one(lockCmd(a, 1, 1000, "ka")), wire.OpOK)
	wantOp(t, s.one(lockCmd(b, 1, 1000, "kb")), wire.OpOK)
	wantOp(t, s.one(command{kind: kindUnlockAll, Session: op, ID: 1, Admin: true}), wire.OpPong)
	require.Zero(t, s.m.Locks(), "locks after UNLOCKALL")
	require.Len(t, s.iso, 2)
	assert.True(t, s.m.Isolated(a))
	assert.True(t, s.m.Isolated(b))
	assert.False(t, s.m.Isolated(op), "the operator's session")
	wantOp(t, s.one(lockCmd(op, 2, 1000, "ka")), wire.OpOK)
	wantOp(t, s.one(lockCmd(a, 2, 1000, "x")), wire.OpIsolated)
}

func TestMachineDisconnect(t *testing.T) {
	s := newSim(t, nil)
	a, b := s.connect(1), s.connect(2)
	wantOp(t, s.one(lockCmd(a, 1, 1000, "k")), wire.OpOK)
	wantOp(t, s.one(command{kind: kindDisconnect, Session: a, ID: 2}), wire.OpDisconnected)
	require.Empty(t, s.iso, "DISCONNECT isolated")
	wantOp(t, s.one(lockCmd(b, 1, 1000, "k")), wire.OpOK)
	wantOp(t, s.one(command{kind: kindDisconnect, Session: a, ID: 2}), wire.OpDisconnected)
	// The nonce is forgotten with the session: a new CONNECT with it is a new session.
	require.NotEqual(t, a, s.connect(1), "closed session revived")
}

func TestMachineFencesIncrease(t *testing.T) {
	s := newSim(t, nil)
	a := s.connect(1)
	var last uint64
	id := uint64(1)
	for i := 0; i < 200; i++ {
		key := string(rune('a' + i%5))
		r := s.one(lockCmd(a, id, 1000, key))
		wantOp(t, r, wire.OpOK)
		require.Greater(t, r.Fence, last)
		last = r.Fence
		s.one(unlockCmd(a, id+1, id, key))
		id += 2
	}
}

func TestMachineFenceLimit(t *testing.T) {
	m := newMachine(machineConfig{MaxTTL: int64(time.Minute), SessionTimeout: int64(time.Minute), FirstFence: 100})
	out, _ := m.Apply(0, []command{{kind: kindConnect, ID: 1}}, nil, nil)
	sess := out[0].Session
	out, _ = m.Apply(0, []command{lockCmd(sess, 1, 1000, "k")}, nil, nil)
	wantErr(t, out[0], wire.CodeLockDelay) // no reservation yet: no fence handed out
	m.SetFenceLimit(101)
	require.Equal(t, uint64(1), m.FencesLeft())
	out, _ = m.Apply(0, []command{lockCmd(sess, 2, 1000, "k"), lockCmd(sess, 3, 1000, "k2")}, nil, nil)
	wantOp(t, out[0], wire.OpOK)
	require.Equal(t, uint64(100), out[0].Fence, "first grant")
	wantErr(t, out[1], wire.CodeLockDelay)
}

func TestMachineReusesEntries(t *testing.T) {
	s := newSim(t, nil)
	a := s.connect(1)
	cmds := []command{lockCmd(a, 1, 1000, "key"), unlockCmd(a, 2, 1, "key")}
	out := make([]result, 0, 2)
	id := uint64(1)
	allocs := testing.AllocsPerRun(1000, func() {
		cmds[0].ID, cmds[1].ID, cmds[1].LockID = id, id+1, id
		cmds[0].Floor, cmds[1].Floor = id, id
		id += 2
		s.now += ms
		out, _ = s.m.Apply(s.now, cmds, out[:0], nil)
		if out[0].Op != wire.OpOK || out[1].Op != wire.OpOK {
			t.Fatalf("results %+v", out)
		}
	})
	require.Zero(t, allocs, "allocations per LOCK+UNLOCK")
}

// TestMachineReleasedCapKeepsFloor: a floor held back by one pending request while the
// session releases more locks than the released list holds must not make the server
// drop that pending request.
func TestMachineReleasedCapKeepsFloor(t *testing.T) {
	s := newSim(t, nil)
	a := s.connect(1)
	id := uint64(2) // id 1 is the request still pending at the client
	for i := 0; i < maxReleased+maxReleased/2; i++ {
		lock := lockCmd(a, id, 1000, "k")
		lock.Floor = 1
		unlock := unlockCmd(a, id+1, id, "k")
		unlock.Floor = 1
		out := s.step(lock, unlock)
		if len(out) != 2 || out[0].Op != wire.OpOK || out[1].Op != wire.OpOK {
			t.Fatalf("pair %d: %+v", i, out)
		}
		id += 2
	}
	wantOp(t, s.one(lockCmd(a, 1, 1000, "pinned")), wire.OpOK)
	// A recent duplicate is still recognised.
	wantErr(t, s.one(lockCmd(a, id-2, 1000, "k")), wire.CodeStale)
}
