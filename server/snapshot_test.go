package server

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/seal"
)

// snapTwin restores a machine from m's snapshot, and checks both machines and that the twin
// snapshots to the same bytes.
func snapTwin(t testing.TB, m *machine, cfg machineConfig, now int64) *machine {
	t.Helper()
	b := m.appendSnapshot(nil)
	require.NoError(t, checkMachine(m), "the original, after its snapshot")
	require.NoError(t, checkQueues(m, now), "the original")
	tw, err := restoreMachine(cfg, b)
	require.NoError(t, err)
	require.NoError(t, checkMachine(tw), "restored")
	require.NoError(t, checkQueues(tw, now), "restored")
	requireSameSnapshot(t, b, tw.appendSnapshot(nil), "the restored machine")
	return tw
}

func requireSameSnapshot(t testing.TB, want, got []byte, what string) {
	t.Helper()
	if bytes.Equal(want, got) {
		return
	}
	i := 0
	for i < min(len(want), len(got)) && want[i] == got[i] {
		i++
	}
	t.Fatalf("%s: snapshots differ from byte %d (lengths %d, %d)", what, i, len(want), len(got))
}

// snapFollow applies n steps of run to m and to its twin: identical results, isolations and
// snapshots after every step.
func snapFollow(t testing.TB, run *snapRun, m, tw *machine, n int) {
	t.Helper()
	var a, b []byte
	for i := range n {
		st := run.next(m)
		out, iso := st.apply(m)
		out2, iso2 := st.apply(tw)
		require.Equal(t, out, out2, "step %d: results", i)
		require.Equal(t, iso, iso2, "step %d: isolations", i)
		run.learn(st, out, iso)
		a, b = m.appendSnapshot(a[:0]), tw.appendSnapshot(b[:0])
		requireSameSnapshot(t, a, b, fmt.Sprintf("step %d", i))
	}
}

// snapSeen counts the parts of the state the random runs had in use when snapshotted.
type snapSeen struct {
	waiters, manyWaiters, bounded, isolated, isolating, released, stalled, peers int
}

func (c *snapSeen) note(m *machine) {
	c.stalled += m.nstalled
	c.bounded += len(m.bounds)
	for _, s := range m.sessions {
		c.released += s.released.Len()
		if s.isolated {
			c.isolated++
		}
		if s.isolating {
			c.isolating++
		}
		if s.peer != nil {
			c.peers++
		}
		for w := s.whead; w != nil; w = w.snext {
			c.waiters++
			if len(w.nodes) > 1 {
				c.manyWaiters++
			}
		}
	}
}

// TestSnapshotRoundTrip: random runs, snapshotted and restored every hundred steps; the
// restored machine then follows the original step by step.
func TestSnapshotRoundTrip(t *testing.T) {
	seeds, steps := 40, 500
	if testing.Short() {
		seeds = 10
	}
	var seen snapSeen
	for seed := range seeds {
		run := newSnapRun(uint64(seed))
		cfg := run.snapConfig()
		m := newMachine(cfg)
		m.SetFenceLimit(m.NextFence() + uint64(run.p.pick(8)))
		for k := 0; k < steps; k += 100 {
			seen.note(m)
			tw := snapTwin(t, m, cfg, run.now)
			snapFollow(t, run, m, tw, 100)
		}
	}
	t.Logf("seen: %+v", seen)
	assert.True(t, seen.waiters > 0 && seen.manyWaiters > 0 && seen.bounded > 0 && seen.isolated > 0 &&
		seen.isolating > 0 && seen.released > 0 && seen.stalled > 0 && seen.peers > 0,
		"the random runs no longer reach every part of the state: %+v", seen)
}

// richAt runs the rich script up to mark.
func richAt(mark int) (*snapRun, machineConfig, *machine) {
	run, cfg, _ := richRun(1)
	m := newMachine(cfg)
	for range mark {
		st := run.next(m)
		out, iso := st.apply(m)
		run.learn(st, out, iso)
	}
	return run, cfg, m
}

// TestSnapshotRichState: the scripted states (stalled keys, draining sessions, expiries
// left over, ...) round-trip; at each, a new twin follows the original, through the rest
// of the script and random steps.
func TestSnapshotRichState(t *testing.T) {
	run, cfg, marks := richRun(1)
	m := newMachine(cfg)
	var tw *machine
	for i, mark := range marks {
		if tw == nil {
			for range mark {
				st := run.next(m)
				out, iso := st.apply(m)
				run.learn(st, out, iso)
			}
		} else {
			snapFollow(t, run, m, tw, mark-marks[i-1])
		}
		live, dead := 0, 0
		for s := m.drainHead; s != nil; s = s.dnext {
			if m.sessions[s.id] == s {
				live++
			} else {
				dead++
			}
		}
		var seen snapSeen
		seen.note(m)
		switch i {
		case 0:
			assert.Equal(t, 2, m.nstalled, "stalled keys")
		case 1:
			assert.LessOrEqual(t, m.expiry[0].deadline, run.now, "expiries left to a later Apply")
			assert.Equal(t, [2]int{0, 1}, [2]int{live, dead}, "an ended session draining")
			assert.Positive(t, seen.waiters*seen.manyWaiters*seen.bounded*seen.isolating*seen.released, "%+v", seen)
		case 2:
			assert.Equal(t, [2]int{1, 1}, [2]int{live, dead}, "a live and an ended session draining")
		}
		tw = snapTwin(t, m, cfg, run.now)
	}
	snapFollow(t, run, m, tw, len(run.script)+20)
}

// TestSnapshotDeterministic: machines built by the same commands give the same bytes,
// whatever their maps' orders.
func TestSnapshotDeterministic(t *testing.T) {
	_, _, marks := richRun(1)
	_, _, a := richAt(marks[len(marks)-1])
	_, _, b := richAt(marks[len(marks)-1])
	requireSameSnapshot(t, a.appendSnapshot(nil), b.appendSnapshot(nil), "rich")
	for seed := range 10 {
		var snaps [2][]byte
		for i := range snaps {
			run := newSnapRun(uint64(seed))
			m := newMachine(run.snapConfig())
			m.SetFenceLimit(m.NextFence() + 8)
			for range 400 {
				st := run.next(m)
				out, iso := st.apply(m)
				run.learn(st, out, iso)
			}
			snaps[i] = m.appendSnapshot(nil)
		}
		requireSameSnapshot(t, snaps[0], snaps[1], fmt.Sprint("seed ", seed))
	}
}

// TestSnapshotEmptyMachine: a new machine round-trips, and its twin follows it.
func TestSnapshotEmptyMachine(t *testing.T) {
	run := newSnapRun(7)
	cfg := run.snapConfig()
	m := newMachine(cfg)
	tw := snapTwin(t, m, cfg, run.now)
	snapFollow(t, run, m, tw, 300)
}

// TestSnapshotWindow: a replay window rebuilt from its state is the same window, and
// accepts the same counters afterwards; a bitmap no Accepts make is refused.
func TestSnapshotWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		var w seal.Window
		base := rng.Uint64N(1 << 20)
		for range rng.IntN(600) {
			switch rng.IntN(10) {
			case 0:
				base += rng.Uint64N(1000) // a jump past the window
			default:
				w.Accept(base + rng.Uint64N(300))
			}
		}
		top, bits := windowState(&w)
		got, ok := restoreWindow(top, bits)
		require.True(t, ok)
		require.Equal(t, w, got)
		for range 200 {
			c := base + rng.Uint64N(600) - 300
			require.Equal(t, w.Accept(c), got.Accept(c), "counter %d", c)
		}
	}
	_, ok := restoreWindow(5, [windowWords]uint64{1<<5 | 1})
	assert.False(t, ok, "a bit for counter 0")
	_, ok = restoreWindow(5, [windowWords]uint64{1 << 4})
	assert.False(t, ok, "top's own bit clear")
	_, ok = restoreWindow(0, [windowWords]uint64{1})
	assert.False(t, ok, "bits without a counter")
}

// snapSamples are valid snapshots of small machines in various states.
func snapSamples() (machineConfig, [][]byte) {
	var out [][]byte
	var cfg machineConfig
	for seed := range 6 {
		run := newSnapRun(uint64(100 + seed))
		cfg = run.snapConfig()
		m := newMachine(cfg)
		out = append(out, m.appendSnapshot(nil))
		m.SetFenceLimit(m.NextFence() + 4)
		for range 150 * (seed + 1) {
			st := run.next(m)
			out2, iso := st.apply(m)
			run.learn(st, out2, iso)
		}
		out = append(out, m.appendSnapshot(nil))
	}
	return cfg, out
}

// checkRestore restores b: refused with errBadSnapshot, or a consistent machine that
// re-encodes to b and keeps its structure through Applies.
func checkRestore(t testing.TB, cfg machineConfig, b []byte) {
	t.Helper()
	m, err := restoreMachine(cfg, b)
	if err != nil {
		require.ErrorIs(t, err, errBadSnapshot)
		require.Nil(t, m)
		return
	}
	require.NoError(t, checkMachine(m))
	requireSameSnapshot(t, b, m.appendSnapshot(nil), "an accepted snapshot re-encoded")
	run := newSnapRun(uint64(len(b)))
	run.now = int64(time.Hour) // past every deadline, bound and timeout written
	for s := range m.sessions {
		run.pending = append(run.pending, s)
	}
	for range 40 {
		st := run.next(m)
		out, iso := st.apply(m)
		run.learn(st, out, iso)
	}
	require.NoError(t, checkMachine(m), "after Applies")
}

// TestRestoreMachineTruncated: every truncation of a snapshot is refused.
func TestRestoreMachineTruncated(t *testing.T) {
	cfg, samples := snapSamples()
	_, _, marks := richRun(1)
	_, _, rich := richAt(marks[2])
	big := rich.appendSnapshot(nil)
	for _, b := range samples {
		for i := range b {
			_, err := restoreMachine(cfg, b[:i])
			require.ErrorIs(t, err, errBadSnapshot, "%d of %d bytes", i, len(b))
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100 {
		i := rng.IntN(len(big))
		_, err := restoreMachine(cfg, big[:i])
		require.ErrorIs(t, err, errBadSnapshot, "%d of %d bytes", i, len(big))
	}
	_, err := restoreMachine(cfg, append([]byte("NMSM\x02"), big[5:]...))
	require.ErrorContains(t, err, "version 2")
	_, err = restoreMachine(cfg, append(big[:len(big):len(big)], 0))
	require.ErrorIs(t, err, errBadSnapshot, "a byte after the end")
}

// TestRestoreMachineCorrupt: changed bytes are refused or give a consistent machine.
func TestRestoreMachineCorrupt(t *testing.T) {
	cfg, samples := snapSamples()
	rng := rand.New(rand.NewPCG(5, 6))
	accepted := 0
	for i := range 2000 {
		b := bytes.Clone(samples[i%len(samples)])
		if len(b) <= 5 {
			continue
		}
		for range 1 + rng.IntN(3) {
			j := 5 + rng.IntN(len(b)-5)
			switch rng.IntN(3) {
			case 0:
				b[j] ^= 1 << rng.IntN(8)
			case 1:
				b[j] = byte(rng.IntN(256))
			default:
				b[j]++
			}
		}
		if _, err := restoreMachine(cfg, b); err == nil {
			accepted++
		}
		checkRestore(t, cfg, b)
	}
	t.Logf("%d of 2000 changed snapshots accepted", accepted)
}

// FuzzRestoreMachine: no input panics restoreMachine; what it accepts is consistent and
// re-encodes to itself.
func FuzzRestoreMachine(f *testing.F) {
	cfg, samples := snapSamples()
	for _, b := range samples {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkRestore(t, cfg, b)
	})
}

// BenchmarkSnapshot: a machine of 100,000 locks held by 1,000 sessions, 1,000 of the
// keys with a waiter: appendSnapshot into a reused buffer, and restoreMachine.
func BenchmarkSnapshot(b *testing.B) {
	cfg := machineConfig{MaxTTL: int64(time.Minute), SessionTimeout: int64(time.Hour)}
	m := newMachine(cfg)
	m.SetFenceLimit(1 << 30)
	var cmds []command
	for i := 1; i <= 1000; i++ {
		p := &peerInfo{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 4000)}
		p.Window.Accept(uint64(i))
		cmds = append(cmds, command{kind: kindConnect, ID: uint64(i), NewSession: uint64(i), Info: []byte("host"), peerInfo: p})
		for j := 1; j <= 100; j++ {
			cmds = append(cmds, lockCmd(uint64(i), uint64(j), 60000, fmt.Sprintf("key-%d-%d", i, j)))
		}
	}
	for i := 1; i <= 1000; i++ {
		cmds = append(cmds, waitCmd(uint64(i), 200, 60000, 30000, fmt.Sprintf("key-%d-1", 1+i%1000)))
	}
	m.Apply(0, cmds, nil, nil)
	require.Equal(b, 100_000, m.Locks())
	require.Equal(b, 1000, m.Waiters())
	snap := m.appendSnapshot(nil)
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(snap)))
		buf := make([]byte, 0, len(snap))
		for b.Loop() {
			buf = m.appendSnapshot(buf[:0])
		}
	})
	b.Run("restore", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(snap)))
		for b.Loop() {
			if _, err := restoreMachine(cfg, snap); err != nil {
				b.Fatal(err)
			}
		}
	})
}
