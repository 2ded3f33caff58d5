package netmutex

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeCluster stands for a replicated cluster of three, as far as a client can tell: the
// relay's three fronts are the cluster's addresses; one real server, the leader, holds
// every session, and followers answer NOT_LEADER. Front 0 starts at the leader, fronts 1
// and 2 at followers; followers[0] is what front 0 leads to when it stops leading. A
// test moves the leader between fronts as an election would: the shared upstream socket
// per client lets the leader take the session from any front.
type fakeCluster struct {
	relay     *relay
	leader    *server.Server
	followers [3]*server.Server
	keyFile   string // "" without keys
}

func newFakeCluster(t *testing.T, withKeys bool) *fakeCluster {
	fc := &fakeCluster{relay: newRelay(t, 3)}
	var keys *seal.Keyring
	if withKeys {
		fc.keyFile = filepath.Join(t.TempDir(), "keys")
		require.NoError(t, os.WriteFile(fc.keyFile, []byte("1 "+testKeyHex+"\n"), 0o600))
		var err error
		keys, err = seal.LoadKeyFile(fc.keyFile)
		require.NoError(t, err)
	}
	members := []server.Member{{ID: 1, Addr: fc.relay.addr(0)}, {ID: 2, Addr: fc.relay.addr(1)}, {ID: 3, Addr: fc.relay.addr(2)}}
	for i := range fc.followers {
		fc.followers[i] = startServer(t, func(c *server.Config) {
			c.ServerID, c.Servers, c.Redirect, c.Keys = uint16(i+1), members, &members[0], keys
		})
	}
	fc.leader = startServer(t, func(c *server.Config) { c.ServerID, c.Servers, c.Keys = 1, members, keys })
	fc.relay.to(0, fc.leader.Addr())
	fc.relay.to(1, fc.followers[1].Addr())
	fc.relay.to(2, fc.followers[2].Addr())
	return fc
}

// open connects through front 0 with the default pacing.
func (fc *fakeCluster) open(t *testing.T) *NetMutex {
	nm, err := OpenContext(context.Background(), []string{fc.relay.addr(0)}, &Options{KeyFile: fc.keyFile})
	require.NoError(t, err)
	t.Cleanup(func() { nm.Close(1, testTimeout) })
	return nm
}

// session returns the NetMutex's connection and its session id.
func session(nm *NetMutex) (*serverConn, uint64) {
	c := nm.conn.Load()
	return c, c.session.Load()
}

// requireSameSession checks that nm is still on connection c and session s, and that
// held is still held: another session cannot take its key, and Update renews it.
func requireSameSession(t *testing.T, fc *fakeCluster, nm *NetMutex, c *serverConn, s uint64, held *Lock) {
	t.Helper()
	require.Same(t, c, nm.conn.Load(), "a new connection")
	require.Equal(t, s, c.session.Load(), "a new session")
	fence := held.FenceID()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, nm.UpdateContext(ctx, held, 10*time.Second), "Update of a lock taken before the move")
	require.Equal(t, fence, held.FenceID())
	other := openClient(t, fc.leader, &Options{KeyFile: fc.keyFile})
	require.ErrorIs(t, other.LockContext(ctx, &Lock{}, held.Key(), time.Second), ErrLocked, "the key held before the move")
}

// TestMoveKeepsSession: when the server in use goes silent, the connection moves its
// socket through the cluster (two followers answer NOT_LEADER) and back once the server
// answers again, on the same session: the locks it held are still held, and the call in
// flight succeeds. With keys, the servers still take the session's datagrams: the
// client's nonce prefix is kept.
func TestMoveKeepsSession(t *testing.T) {
	for _, withKeys := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "keys"}[withKeys]
		t.Run(name, func(t *testing.T) {
			fc := newFakeCluster(t, withKeys)
			nm := fc.open(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var held Lock
			require.NoError(t, nm.LockContext(ctx, &held, "held", 10*time.Second))
			c, s := session(nm)

			fc.relay.silence(0, true)
			r1, r2 := fc.relay.received(1), fc.relay.received(2)
			done := make(chan error, 1)
			var l Lock
			go func() { done <- nm.LockContext(ctx, &l, "during", 10*time.Second) }()
			waitFor(t, 5*time.Second, func() bool { return fc.relay.received(1) > r1 && fc.relay.received(2) > r2 })
			fc.relay.silence(0, false)
			require.NoError(t, <-done, "Lock while the server was cut off")

			requireSameSession(t, fc, nm, c, s, &held)
			assert.Equal(t, fc.relay.addr(0), c.currentAddr(), "back on the server")
			st := nm.Stats()
			assert.GreaterOrEqual(t, st.Moves, uint64(3), "moves in %+v", st)
			assert.GreaterOrEqual(t, st.NotLeader, uint64(2), "NOT_LEADER answers in %+v", st)
			require.NoError(t, nm.UnlockContext(ctx, &l))
			require.NoError(t, nm.UnlockContext(ctx, &held))
			ls := fc.leader.Stats()
			assert.Equal(t, uint64(2), ls.Grants, "grants")
			assert.Zero(t, ls.Isolations+ls.BadPeer+ls.Replays, "isolations, datagrams refused for the session: %+v", ls)
		})
	}
}

// TestFailoverWithinASecond: the leader dies (killed: nothing listens there any more; or
// cut off: silence) and another server wins the election half a second later. A Lock
// started at the death succeeds on the new leader within a second, with the default
// pacing, on the same session.
func TestFailoverWithinASecond(t *testing.T) {
	for _, killed := range []bool{true, false} {
		name := map[bool]string{true: "killed", false: "cut off"}[killed]
		t.Run(name, func(t *testing.T) {
			fc := newFakeCluster(t, false)
			nm := fc.open(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var held Lock
			require.NoError(t, nm.LockContext(ctx, &held, "held", 10*time.Second))
			c, s := session(nm)

			died := time.Now()
			if killed {
				fc.relay.kill(0)
			} else {
				fc.relay.silence(0, true)
			}
			done := make(chan error, 1)
			var l Lock
			go func() { done <- nm.LockContext(ctx, &l, "after", 10*time.Second) }()
			time.Sleep(500 * time.Millisecond)
			fc.relay.to(1, fc.leader.Addr()) // elected
			require.NoError(t, <-done)
			took := time.Since(died)
			t.Logf("Lock done %v after the leader died; %+v", took, nm.Stats())
			assert.Less(t, took, time.Second, "failover time")
			requireSameSession(t, fc, nm, c, s, &held)
			assert.Equal(t, fc.relay.addr(1), c.currentAddr(), "on the new leader")
		})
	}
}

// TestNotLeaderNeverSurfaces: while no server of the cluster leads, calls end as their
// pacing says (ErrTooMuchRetries, the context's error), never with an error that
// NOT_LEADER drew; once a leader is back, the session goes on.
func TestNotLeaderNeverSurfaces(t *testing.T) {
	fc := newFakeCluster(t, false)
	nm := fc.open(t)
	var held Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &held, "held", 10*time.Second))
	c, s := session(nm)

	fc.relay.to(0, fc.followers[0].Addr()) // an election: nobody leads
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, nm.LockContext(ctx, &Lock{}, "k", time.Second), context.DeadlineExceeded, "LockContext")
	require.ErrorIs(t, nm.Lock(3, 50*time.Millisecond, &Lock{}, "k", time.Second), ErrTooMuchRetries, "Lock")
	require.ErrorIs(t, nm.Update(3, 50*time.Millisecond, &held, time.Second), ErrTooMuchRetries, "Update")
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	err := nm.AcquireMany(ctx2, []*Lock{{}, {}}, []string{"a", "b"}, time.Second)
	require.ErrorIs(t, err, context.DeadlineExceeded, "AcquireMany")
	assert.NotErrorIs(t, err, ErrRefused)
	assert.Positive(t, nm.Stats().NotLeader)

	fc.relay.to(0, fc.leader.Addr())
	requireSameSession(t, fc, nm, c, s, &held)
}

// TestRoundsPause: while every server answers NOT_LEADER (an election under way), the
// client pauses between rounds, 25 ms doubling to 200 ms, instead of bouncing between
// them; the call in flight goes through soon after a leader is back.
func TestRoundsPause(t *testing.T) {
	fc := newFakeCluster(t, false)
	nm := fc.open(t)
	c, s := session(nm)
	sum := func() (n uint64) {
		for i := range fc.relay.fronts {
			n += fc.relay.received(i)
		}
		return n
	}
	fc.relay.to(0, fc.followers[0].Addr())
	before := sum()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	var l Lock
	go func() { done <- nm.LockContext(ctx, &l, "k", 10*time.Second) }()
	time.Sleep(600 * time.Millisecond)
	during := sum() - before
	fc.relay.to(0, fc.leader.Addr())
	back := time.Now()
	require.NoError(t, <-done)
	// Pauses of 25, 50, 100, 200, 200 ms: 6 or 7 rounds of three datagrams and a probe
	// in 600 ms. Without pauses, a loopback round trip each: thousands.
	t.Logf("%d datagrams to the cluster in 600 ms without a leader; %+v", during, nm.Stats())
	assert.LessOrEqual(t, during, uint64(40), "datagrams while nobody led")
	assert.GreaterOrEqual(t, during, uint64(12), "the client kept trying")
	assert.Less(t, time.Since(back), 500*time.Millisecond, "Lock once a leader was back")
	require.Same(t, c, nm.conn.Load())
	require.Equal(t, s, c.session.Load())
}

// TestHoldAcrossMove: a lock held with Hold keeps its renewals while the leader dies and
// another is elected; fn's context is never cancelled, and nothing is isolated.
func TestHoldAcrossMove(t *testing.T) {
	fc := newFakeCluster(t, false)
	nm := fc.open(t)
	release := make(chan struct{})
	holding := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- nm.Hold(context.Background(), "held", time.Second, func(ctx context.Context, l *Lock) error {
			close(holding)
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		})
	}()
	<-holding
	fc.relay.silence(0, true)
	time.Sleep(300 * time.Millisecond)
	fc.relay.to(1, fc.leader.Addr()) // elected
	time.Sleep(1500 * time.Millisecond)
	close(release)
	require.NoError(t, <-done, "Hold across the move")
	assert.Zero(t, fc.leader.Stats().Isolations)
	assert.Positive(t, nm.Stats().Moves)
}

// TestAcquireAcrossMove: a waiting Acquire keeps its place in the queue while the leader
// dies and another is elected: its LOCK goes to the new leader with the same id, and
// the grant comes there when the holder unlocks.
func TestAcquireAcrossMove(t *testing.T) {
	fc := newFakeCluster(t, false)
	nm := fc.open(t)
	c, s := session(nm)
	other := openClient(t, fc.leader, nil)
	var lo Lock
	require.NoError(t, other.Lock(testRetries, testTimeout, &lo, "k", 10*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	var l Lock
	go func() { done <- nm.Acquire(ctx, &l, "k", 10*time.Second) }()
	time.Sleep(100 * time.Millisecond) // queued
	fc.relay.silence(0, true)
	time.Sleep(300 * time.Millisecond)
	fc.relay.to(1, fc.leader.Addr()) // elected
	time.Sleep(700 * time.Millisecond)
	fence := lo.FenceID()
	require.NoError(t, other.Unlock(testRetries, testTimeout, &lo))
	require.NoError(t, <-done, "Acquire across the move")
	assert.Greater(t, l.FenceID(), fence)
	require.Same(t, c, nm.conn.Load())
	require.Equal(t, s, c.session.Load())
	assert.Equal(t, fc.relay.addr(1), c.currentAddr())
}
