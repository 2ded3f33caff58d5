package server

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// Tests of the machine's limits (issue 9, items 3 and 5): caps and their refusals,
// UNLOCKALL for admins, session ids from the loop, the released-id set, bounded work per
// Apply, tables returned after a flood.

func peerAt(s string) *peerInfo { return &peerInfo{Addr: netip.MustParseAddrPort(s)} }

func (s *sim) connectFrom(nonce uint64, p *peerInfo) result {
	s.t.Helper()
	return s.one(command{kind: kindConnect, ID: nonce, NewSession: s.draw(), peerInfo: p})
}

func TestMachineSessionIDsFromLoop(t *testing.T) {
	s := newSim(t, nil)
	p := peerAt("192.0.2.1:4000")
	r := s.one(command{kind: kindConnect, ID: 1, NewSession: 77, peerInfo: p})
	require.Equal(t, uint64(77), r.Session, "the loop's draw")
	assert.Same(t, p, s.m.peerInfo(77), "Peer kept with the session")
	// A draw that collides with a live session, or 0: the next free id.
	assert.Equal(t, uint64(78), s.one(command{kind: kindConnect, ID: 2, NewSession: 77}).Session)
	assert.Equal(t, uint64(79), s.one(command{kind: kindConnect, ID: 3, NewSession: 77}).Session)
	assert.Equal(t, uint64(1), s.one(command{kind: kindConnect, ID: 4, NewSession: 0}).Session)
	assert.Equal(t, uint64(2), s.one(command{kind: kindConnect, ID: 5, NewSession: 0}).Session)
	// Wrapping past 2^64-1 skips 0 and the live ids.
	s.one(command{kind: kindConnect, ID: 6, NewSession: ^uint64(0)})
	assert.Equal(t, uint64(3), s.one(command{kind: kindConnect, ID: 7, NewSession: ^uint64(0)}).Session)
	assert.Nil(t, s.m.peerInfo(78), "a CONNECT without Peer")
	assert.Nil(t, s.m.peerInfo(12345), "no such session")
	wantOp(t, s.one(command{kind: kindDisconnect, Session: 77, ID: 1}), wire.OpDisconnected)
	assert.Nil(t, s.m.peerInfo(77), "Peer forgotten with the session")
}

// TestMachineConnectNonceFromElsewhere: a CONNECT nonce seen on the network, sent again
// from another address, key or nonce prefix, neither fetches nor refreshes the session
// of the CONNECT that chose it; its own sender still gets it back.
func TestMachineConnectNonceFromElsewhere(t *testing.T) {
	s := newSim(t, nil)
	victim := peerAt("192.0.2.1:4000")
	r := s.one(command{kind: kindConnect, ID: 99, NewSession: 500, peerInfo: victim})
	require.Equal(t, uint64(500), r.Session)
	others := []*peerInfo{peerAt("192.0.2.2:4000"), peerAt("192.0.2.1:4001"), nil}
	sameAddrOtherKey := *victim
	sameAddrOtherKey.KeyID = 9
	sameAddrOtherPrefix := *victim
	sameAddrOtherPrefix.Prefix[0] = 1
	others = append(others, &sameAddrOtherKey, &sameAddrOtherPrefix)
	for _, p := range others {
		got := s.one(command{kind: kindConnect, ID: 99, NewSession: 600, peerInfo: p})
		wantErr(t, got, wire.CodeBadRequest)
		assert.NotEqual(t, uint64(500), got.Session, "the victim's session id leaked")
	}
	assert.Equal(t, uint64(500), s.one(command{kind: kindConnect, ID: 99, NewSession: 700, peerInfo: victim}).Session)
	assert.Same(t, victim, s.m.peerInfo(500))
}

func TestMachineSessionCaps(t *testing.T) {
	s := newSim(t, func(c *machineConfig) { c.MaxSessions, c.MaxSessionsPerAddr = 5, 2 })
	a1, a2 := peerAt("192.0.2.1:1"), peerAt("192.0.2.1:2")
	a3 := peerAt("[::ffff:192.0.2.1]:3") // the same IP, IPv4-mapped
	b := peerAt("[2001:db8::1]:1")
	first := s.connectFrom(1, a1)
	wantOp(t, first, wire.OpConnected)
	wantOp(t, s.connectFrom(2, a2), wire.OpConnected)
	wantErr(t, s.connectFrom(3, a3), wire.CodeTooManySessions)
	wantOp(t, s.connectFrom(1, a1), wire.OpConnected) // a retransmitted CONNECT is no new session
	wantOp(t, s.connectFrom(4, b), wire.OpConnected)
	wantOp(t, s.connectFrom(5, nil), wire.OpConnected) // no Peer: no per-address cap
	wantOp(t, s.connectFrom(6, nil), wire.OpConnected)
	require.Equal(t, 5, s.m.Sessions())
	wantErr(t, s.connectFrom(7, peerAt("198.51.100.1:1")), wire.CodeTooManySessions)
	require.Equal(t, 5, s.m.Sessions(), "a refusal changes nothing")
	// A session that ends frees its share.
	wantOp(t, s.one(command{kind: kindDisconnect, Session: first.Session, ID: 1}), wire.OpDisconnected)
	wantOp(t, s.connectFrom(3, a3), wire.OpConnected)
	assert.Equal(t, 2, s.m.perAddr[netip.MustParseAddr("192.0.2.1")])
	// Timeouts too.
	s.now += 16 * int64(time.Second)
	s.step()
	assert.Zero(t, s.m.Sessions())
	assert.Empty(t, s.m.perAddr)
}

func TestMachineLockCaps(t *testing.T) {
	s := newSim(t, func(c *machineConfig) { c.MaxLocksPerSession, c.MaxLocks = 2, 3 })
	a, b := s.connect(1), s.connect(2)
	wantOp(t, s.one(lockCmd(a, 1, 1000, "k1")), wire.OpOK)
	wantOp(t, s.one(lockCmd(a, 2, 1000, "k2")), wire.OpOK)
	wantErr(t, s.one(lockCmd(a, 3, 1000, "k3")), wire.CodeTooManyLocks)
	wantFree(t, s.m, "k3", "refused")
	wantOp(t, s.one(lockCmd(a, 2, 1000, "k2")), wire.OpOK) // retransmitted grant, at the cap
	wantErr(t, s.one(lockCmd(a, 4, 1000, "kb")), wire.CodeTooManyLocks)
	wantOp(t, s.one(lockCmd(b, 1, 1000, "k1")), wire.OpLocked) // held: LOCKED, not a cap
	wantOp(t, s.one(lockCmd(b, 2, 1000, "kb")), wire.OpOK)
	wantErr(t, s.one(lockCmd(b, 3, 1000, "kc")), wire.CodeServerFull)
	require.Equal(t, 3, s.m.Locks())
	// Refusals are final for their id, like LOCKED: a copy after room was made is not
	// granted to a client that gave the id up.
	wantOp(t, s.one(unlockCmd(a, 5, 1, "k1")), wire.OpOK)
	wantErr(t, s.one(lockCmd(a, 3, 1000, "k3")), wire.CodeTooManyLocks)
	wantErr(t, s.one(lockCmd(b, 3, 1000, "kc")), wire.CodeServerFull)
	wantFree(t, s.m, "kc", "a refused id granted late")
	wantOp(t, s.one(lockCmd(b, 6, 1000, "kc")), wire.OpOK) // a new id is
}

func TestMachineUnlockAllForbidden(t *testing.T) {
	s := newSim(t, nil)
	a, op := s.connect(1), s.connect(2)
	wantOp(t, s.one(lockCmd(a, 1, 1000, "k")), wire.OpOK)
	wantErr(t, s.one(command{kind: kindUnlockAll, Session: op, ID: 1}), wire.CodeForbidden)
	wantHolder(t, s.m, "k", a, 1, s.m.NextFence()-1)
	assert.False(t, s.m.Isolated(a))
	assert.Empty(t, s.iso)
	wantOp(t, s.one(command{kind: kindUnlockAll, Session: op, ID: 2, Admin: true}), wire.OpPong)
	wantFree(t, s.m, "k", "after UNLOCKALL")
}

// TestReleasedSetModel checks the released-id set against a map under in-order,
// reverse-order and random insertions, floors and the cap.
func TestReleasedSetModel(t *testing.T) {
	for seed := uint64(0); seed < 40; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		var r releasedSet
		var pool leafPool
		model := map[uint64]uint8{}
		var floor uint64
		next := uint64(1 << 20)
		for step := 0; step < 20000; step++ {
			var id uint64
			switch mode := seed % 4; {
			case mode == 0 || rng.IntN(8) == 0:
				next++
				id = next // in order
			case mode == 1:
				next--
				id = next // reverse order
			default:
				id = floor + rng.Uint64N(1<<16)
			}
			how := uint8(rng.IntN(5))
			if _, ok := model[id]; !ok && id >= floor {
				model[id] = how
			}
			if id >= floor {
				r.add(id, how, &pool)
			}
			if rng.IntN(500) == 0 {
				floor += rng.Uint64N(1 << 12)
				for k := range model {
					if k < floor {
						delete(model, k)
					}
				}
				r.pruneBelow(floor, &pool)
			}
			if step%997 == 0 {
				checkReleasedSet(t, &r, model)
			}
		}
		checkReleasedSet(t, &r, model)
	}
}

func checkReleasedSet(t *testing.T, r *releasedSet, model map[uint64]uint8) {
	t.Helper()
	require.Equal(t, len(model), r.Len())
	var ids []uint64
	for i, l := range r.leaves {
		require.NotEmpty(t, l.ids, "empty leaf %d", i)
		require.LessOrEqual(t, len(l.ids), leafCap)
		require.Len(t, l.how, len(l.ids))
		ids = append(ids, l.ids...)
	}
	require.True(t, slices.IsSorted(ids))
	for k, how := range model {
		got, ok := r.get(k)
		require.True(t, ok, "id %d lost", k)
		require.Equal(t, how, got, "id %d", k)
	}
}

// TestReleasedSetCap: past maxReleased ids the lowest quarter is forgotten, as before.
func TestReleasedSetCap(t *testing.T) {
	var r releasedSet
	var pool leafPool
	for id := uint64(maxReleased + 1); id >= 2; id-- { // reverse order, the attack's
		r.add(id, answeredLocked, &pool)
	}
	require.Equal(t, maxReleased, r.Len())
	r.add(1, answeredLocked, &pool)
	require.Equal(t, maxReleased-maxReleased/4+1, r.Len())
	_, ok := r.get(2 + maxReleased/4 - 1)
	assert.False(t, ok, "the lowest quarter is forgotten")
	_, ok = r.get(2 + maxReleased/4)
	assert.True(t, ok)
	_, ok = r.get(1)
	assert.True(t, ok, "the new id")
}

// refusedDescending: n refused LOCKs with descending ids from one session whose floor
// stays at 0 (issue 9 item 3: each was a 2 MiB copy at the front of a sorted slice).
func refusedDescending(tb testing.TB, n int) *machine {
	m := newMachine(machineConfig{MaxTTL: int64(time.Minute)})
	m.SetFenceLimit(m.NextFence() + 1<<20)
	out, _ := m.Apply(0, []command{{kind: kindConnect, ID: 1, NewSession: 1}, {kind: kindConnect, ID: 2, NewSession: 2}}, nil, nil)
	out, _ = m.Apply(0, []command{lockCmd(1, 1<<40, 60000, "k")}, out[:0], nil)
	require.Equal(tb, wire.OpOK, out[0].Op)
	cmds := make([]command, 64)
	id := uint64(1 << 40)
	for i := 0; i < n; i += len(cmds) {
		for j := range cmds {
			id--
			cmds[j] = lockCmd(2, id, 60000, "k")
		}
		out, _ = m.Apply(0, cmds, out[:0], nil)
		require.Equal(tb, wire.OpLocked, out[len(out)-1].Op)
	}
	return m
}

func TestMachineRefusedDescendingIDs(t *testing.T) {
	m := refusedDescending(t, 100_000)
	s := m.sessions[2]
	require.Equal(t, 100_032, s.released.Len())
	assert.LessOrEqual(t, len(s.released.leaves), 100_032/leafCap+2, "reverse order fills its leaves")
}

// BenchmarkRefusedDescendingIDs: 100,000 refused LOCKs with descending ids, through
// Apply. Reports ms per 100k.
func BenchmarkRefusedDescendingIDs(b *testing.B) {
	for b.Loop() {
		refusedDescending(b, 100_000)
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/100k")
}

// idleSessions: a machine with n idle sessions and holders sessions holding one lock.
func idleSessions(tb testing.TB, n, holders int) *machine {
	m := newMachine(machineConfig{MaxTTL: int64(time.Minute), SessionTimeout: int64(time.Hour)})
	m.SetFenceLimit(m.NextFence() + 1<<20)
	cmds := make([]command, 0, 1024)
	var out []result
	for i := 0; i < n+holders; i++ {
		cmds = append(cmds, command{kind: kindConnect, ID: uint64(i + 1), NewSession: uint64(i + 1)})
		if len(cmds) == cap(cmds) || i == n+holders-1 {
			out, _ = m.Apply(0, cmds, out[:0], nil)
			cmds = cmds[:0]
		}
	}
	for i := n; i < n+holders; i++ {
		cmds = append(cmds, lockCmd(uint64(i+1), 1, 60000, fmt.Sprint("k", i)))
	}
	_, _ = m.Apply(0, cmds, out[:0], nil)
	require.Equal(tb, holders, m.Locks())
	return m
}

func TestMachineUnlockAllManyIdleSessions(t *testing.T) {
	m := idleSessions(t, 300_000, 10)
	out, iso := m.Apply(1, []command{{kind: kindUnlockAll, Session: 1, ID: 1, Admin: true}}, nil, nil)
	require.Equal(t, wire.OpPong, out[0].Op)
	require.Zero(t, m.Locks())
	require.Empty(t, iso, "no isolation command configured")
	require.Equal(t, uint64(10), m.Isolations())
	assert.True(t, m.Isolated(300_001))
	assert.False(t, m.Isolated(1))
	assert.Less(t, m.work, 100, "UNLOCKALL walked more than the holders")
}

// BenchmarkUnlockAllIdleSessions: UNLOCKALL with 300,000 idle sessions and 10 holders
// (issue 9 item 3: a 2.9 s stall walking every session).
func BenchmarkUnlockAllIdleSessions(b *testing.B) {
	m := idleSessions(b, 300_000, 10)
	cmd := []command{{kind: kindUnlockAll, Session: 1, ID: 1, Admin: true}}
	out := make([]result, 0, 1)
	now := int64(1)
	for b.Loop() {
		now++
		cmd[0].ID++
		out, _ = m.Apply(now, cmd, out[:0], nil)
	}
}

// massLocks: one session holding n locks with the same deadline.
func massLocks(tb testing.TB, n int, isolate bool) (*machine, []result) {
	m := newMachine(machineConfig{MaxTTL: int64(time.Minute), Isolate: isolate})
	m.SetFenceLimit(m.NextFence() + uint64(n) + 1<<10)
	out, _ := m.Apply(0, []command{{kind: kindConnect, ID: 1, NewSession: 1}, {kind: kindConnect, ID: 2, NewSession: 2}}, nil, nil)
	cmds := make([]command, 0, 4096)
	for i := 0; i < n; i++ {
		cmds = append(cmds, lockCmd(1, uint64(i+1), 1000, fmt.Sprint("k", i)))
		if len(cmds) == cap(cmds) || i == n-1 {
			out, _ = m.Apply(0, cmds, out[:0], nil)
			cmds = cmds[:0]
		}
	}
	require.Equal(tb, n, m.Locks())
	return m, out
}

// TestMachineMassExpiryBounded: 1,000,000 locks expiring together (issue 9 item 5: a
// 515 ms stall) are processed at most applyBudget at a time, while the keys behave as
// if expired all at once.
func TestMachineMassExpiryBounded(t *testing.T) {
	const n = 1_000_000
	m, out := massLocks(t, n, false)
	now := int64(1000 * ms)
	applies := 0
	var iso []isolation
	for {
		cmds := []command(nil)
		if applies == 3 {
			// Keys still waiting to be freed are free: the session was released at once.
			cmds = []command{lockCmd(2, 1, 60000, "k999999"), lockCmd(2, 2, 60000, "k0")}
		}
		out, iso = m.Apply(now, cmds, out[:0], iso[:0])
		require.LessOrEqual(t, m.work, applyBudget, "Apply %d", applies)
		if applies == 0 {
			require.Zero(t, m.Locks(), "expired locks still counted")
			require.True(t, m.Isolated(1))
		}
		if applies == 3 {
			require.Equal(t, wire.OpOK, out[0].Op)
			require.Equal(t, wire.OpOK, out[1].Op)
		}
		applies++
		now += 20 * ms
		if applies > 2*n/applyBudget+10 {
			break
		}
		if applies > 3 && m.drainHead == nil && len(m.expiry) == 2 {
			break
		}
	}
	assert.Greater(t, applies, n/applyBudget, "the work was not spread")
	assert.Equal(t, 2, m.Locks())
	assert.Nil(t, m.drainHead)
	assert.Equal(t, 2, len(m.expiry))
}

// TestMachineOverdueBeforeProcessed: locks past their deadline that the budget has not
// reached yet are expired before anyone uses their key or their holder renews them.
func TestMachineOverdueBeforeProcessed(t *testing.T) {
	s := newSim(t, nil) // with an isolation command: keys wait for it
	const n = 3 * applyBudget
	var sess []uint64
	for i := 0; i < n; i++ {
		sess = append(sess, s.connect(uint64(i+1)))
	}
	other := s.connect(uint64(n + 1))
	var cmds []command
	for i, id := range sess {
		ttl := uint32(1000)
		if i == n-1 || i == n-2 {
			ttl = 2000 // the last ones expire last, beyond the first Apply's budget
		}
		cmds = append(cmds, lockCmd(id, 1, ttl, fmt.Sprint("k", i)))
	}
	s.step(cmds...)
	require.Equal(t, n, s.m.Locks())
	s.now += 2500 * ms
	out := s.step(
		lockCmd(other, 1, 1000, fmt.Sprint("k", n-1)),          // held by an isolated holder: LOCKED
		updateCmd(sess[n-2], 2, 1, 1000, fmt.Sprint("k", n-2)), // too late to renew: ISOLATED
	)
	require.LessOrEqual(t, s.m.work, applyBudget)
	wantOp(t, out[0], wire.OpLocked)
	wantOp(t, out[1], wire.OpIsolated)
	assert.True(t, s.m.Isolated(sess[n-1]))
	assert.True(t, s.m.Isolated(sess[n-2]))
	got := map[uint64]bool{}
	for _, i := range s.iso {
		got[i.Session] = true
	}
	assert.True(t, got[sess[n-1]] && got[sess[n-2]], "isolations asked for the overdue holders")
	for i := 0; i < 10; i++ {
		s.now += 20 * ms
		s.step()
	}
	assert.Equal(t, uint64(n), s.m.Isolations(), "every holder isolated")
}

// TestMachineMemoryRebuilt: after a flood of sessions and of locks, the tables are
// rebuilt once they fall far below their peak.
func TestMachineMemoryRebuilt(t *testing.T) {
	m := idleSessions(t, 50_000, 0)
	var cmds []command
	for i := 1; i <= 49_000; i++ {
		cmds = append(cmds, command{kind: kindDisconnect, Session: uint64(i), ID: 1})
	}
	m.Apply(1, cmds, nil, nil)
	require.Equal(t, 1000, m.Sessions())
	require.Positive(t, m.rebuilds, "session tables kept at their peak")
	require.Equal(t, 1000, m.sessPeak)
	require.Len(t, m.nonces, 1000)

	m2, out := massLocks(t, 100_000, false)
	before := m2.rebuilds
	out, _ = m2.Apply(0, []command{{kind: kindDisconnect, Session: 1, ID: 1 << 30}}, out[:0], nil)
	require.Equal(t, wire.OpDisconnected, out[0].Op)
	for now := int64(1); m2.drainHead != nil; now++ {
		m2.Apply(now, nil, nil, nil)
	}
	m2.Apply(1000, nil, nil, nil)
	assert.Greater(t, m2.rebuilds, before, "lock table kept at its peak")
	assert.Less(t, len(m2.locks), 100_000/4)
	assert.Less(t, cap(m2.expiry), 100_000/4)
}
