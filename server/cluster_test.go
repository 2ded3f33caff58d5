package server

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
	"github.com/stretchr/testify/require"
)

// freePorts returns n UDP ports and n TCP ports on 127.0.0.1 free a moment ago.
func freePorts(t *testing.T, n int) (udp, tcp []string) {
	t.Helper()
	for i := 0; i < n; i++ {
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		udp = append(udp, u.LocalAddr().String())
		tcp = append(tcp, l.Addr().String())
		defer u.Close()
		defer l.Close()
	}
	return udp, tcp
}

// testCluster is n nodes in this process, each with its own data directory.
type testCluster struct {
	t       *testing.T
	members []ClusterMember
	dirs    []string
	nodes   []*Server
	ring    *seal.Keyring
	// isolateLog, if set, makes every node run an isolation command that appends the
	// info to isolateLog-<node name>.
	isolateLog string
	// snapshotEvery is the nodes' SnapshotThreshold (and trailing log); 0: the default.
	snapshotEvery uint64
}

// clusterOption sets up a testCluster before its nodes start.
type clusterOption func(*testCluster)

func newTestCluster(t *testing.T, n int, ring *seal.Keyring, opts ...clusterOption) *testCluster {
	udp, tcp := freePorts(t, n)
	tc := &testCluster{t: t, ring: ring}
	for _, o := range opts {
		o(tc)
	}
	for i := 0; i < n; i++ {
		tc.members = append(tc.members, ClusterMember{Name: fmt.Sprintf("n%d", i+1), ClientAddr: udp[i], RaftAddr: tcp[i]})
		tc.dirs = append(tc.dirs, t.TempDir())
	}
	tc.nodes = make([]*Server, n)
	for i := range tc.nodes {
		tc.start(i)
	}
	t.Cleanup(func() {
		for _, s := range tc.nodes {
			if s != nil {
				s.Close()
			}
		}
	})
	return tc
}

func (tc *testCluster) start(i int) {
	cfg := testConfig(tc.t, tc.dirs[i])
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", tc.members[i].Name)
	}
	cfg.ListenAddr = ""
	cfg.Keys = tc.ring
	cfg.Cluster = &ClusterConfig{Name: tc.members[i].Name, Members: tc.members, SnapshotThreshold: tc.snapshotEvery}
	cfg.HTTPAddr = "127.0.0.1:0"
	if tc.isolateLog != "" {
		cfg.IsolateCmd = "cat >> " + tc.isolateLog + "-" + tc.members[i].Name + "; echo >> " + tc.isolateLog + "-" + tc.members[i].Name
	}
	tc.nodes[i] = startServer(tc.t, cfg)
}

// leader waits for a node that leads and serves, and returns its index.
func (tc *testCluster) leader() int {
	tc.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, s := range tc.nodes {
			if s != nil && s.Leading() {
				return i
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	tc.t.Fatal("no leader")
	return -1
}

// leaderLog waits for a leader and returns it with its Raft, whose LastIndex counts
// the entries it logged.
func (tc *testCluster) leaderLog() (*Server, *raft.Raft) {
	tc.t.Helper()
	leader := tc.nodes[tc.leader()]
	return leader, leader.rep.raft.Load()
}

func TestClusterFailoverKeepsSessionAndLocks(t *testing.T) {
	ring := testRing(t)
	tc := newTestCluster(t, 3, ring)
	li := tc.leader()
	leader := tc.nodes[li]
	follower := tc.nodes[(li+1)%3]

	c := newSealedClient(t, leader.Addr(), ring, 1)
	conn := c.connect("info")
	require.Len(t, conn.Servers, 3, "CONNECTED lists the cluster")
	lockID, f := c.lock("k", 10*time.Second)
	requireOp(t, f, wire.OpOK, "LOCK on the leader")
	fence := f.Fence

	require.Contains(t, readyz(t, leader), "role: leader")
	require.Contains(t, readyz(t, follower), "role: follower; leader: server "+fmt.Sprint(li+1))

	// A follower redirects CONNECT and answers requests NOT_LEADER.
	fc := newSealedClient(t, follower.Addr(), ring, 1)
	fc.sealer, fc.session, fc.nextID = c.sealer, c.session, c.nextID+100
	f = fc.lockFrame("other", time.Second)
	requireOp(t, f, wire.OpError, "LOCK on a follower")
	require.Equal(t, wire.CodeNotLeader, f.Code)
	fc.send(fc.datagram(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpTouch, fc.id()) }))
	fc.requireQuiet(200*time.Millisecond, "a follower answers TOUCH with nothing: an ERROR would be larger")

	// The leader dies; a new one is elected and knows the session and the lock.
	started := time.Now()
	require.NoError(t, leader.Abort())
	tc.nodes[li] = nil
	ni := tc.leader()
	t.Logf("new leader after %v", time.Since(started))
	nc := newSealedClient(t, tc.nodes[ni].Addr(), ring, 1)
	nc.sealer, nc.session, nc.nextID = c.sealer, c.session, c.nextID+200
	f = nc.call(func(b []byte) []byte { return wire.AppendUpdate(b, nc.id(), lockID, 10_000, "k") })
	requireOp(t, f, wire.OpOK, "UPDATE of the lock on the new leader")
	require.Equal(t, fence, f.Fence, "same lock, same fence")
	_, f = nc.lock("k2", time.Second)
	requireOp(t, f, wire.OpOK, "LOCK on the new leader")
	require.Greater(t, f.Fence, fence, "fences rise across a failover")
	f = nc.unlock("k", lockID)
	requireOp(t, f, wire.OpOK, "UNLOCK on the new leader")
}

// sameSession makes a client that speaks for c's session through another socket to addr, as
// a client does after a failover (keys: the same key and nonce prefix).
func sameSession(t *testing.T, c *client, addr interface{ String() string }, ring *seal.Keyring) *client {
	nc := newSealedClient(t, addr, ring, 1)
	nc.sealer, nc.session, nc.floor = c.sealer, c.session, c.floor
	c.nextID += 1000
	nc.nextID = c.nextID
	return nc
}

// TestClusterFullRestart: every node stops (cleanly, then killed) and starts again on its
// data: the session and its lock are still there, with no lock-delay, and new fences
// are above every earlier one.
func TestClusterFullRestart(t *testing.T) {
	ring := testRing(t)
	tc := newTestCluster(t, 3, ring)
	for round, clean := range []bool{true, false} {
		li := tc.leader()
		c := newSealedClient(t, tc.nodes[li].Addr(), ring, 1)
		c.connect("restart")
		lockID, f := c.lock("held", time.Minute)
		requireOp(t, f, wire.OpOK, "LOCK")
		fence := f.Fence
		for i, s := range tc.nodes {
			if clean {
				require.NoError(t, s.Close())
			} else {
				require.NoError(t, s.Abort())
			}
			tc.nodes[i] = nil
		}
		for i := range tc.nodes {
			tc.start(i)
		}
		li = tc.leader()
		nc := sameSession(t, c, tc.nodes[li].Addr(), ring)
		f = nc.call(func(b []byte) []byte { return wire.AppendUpdate(b, nc.id(), lockID, 60_000, "held") })
		requireOp(t, f, wire.OpOK, fmt.Sprintf("round %d: UPDATE after the restart", round))
		other := newSealedClient(t, tc.nodes[li].Addr(), ring, 1)
		other.connect("other")
		requireOp(t, other.lockFrame("held", time.Second), wire.OpLocked, "the key is still held")
		_, f = other.lock(fmt.Sprintf("new%d", round), time.Second)
		requireOp(t, f, wire.OpOK, "a new key: no lock-delay")
		require.Greater(t, f.Fence, fence, "fences rise across a full restart")
		requireOp(t, nc.unlock("held", lockID), wire.OpOK, "UNLOCK")
	}
}

// TestClusterExpiryInLogTime: with no traffic, a lock expires by the leader's ticks.
func TestClusterExpiryInLogTime(t *testing.T) {
	ring := testRing(t)
	tc := newTestCluster(t, 3, ring)
	li := tc.leader()
	c := newSealedClient(t, tc.nodes[li].Addr(), ring, 1)
	c.connect("expiry")
	_, f := c.lock("short", 500*time.Millisecond)
	requireOp(t, f, wire.OpOK, "LOCK")
	other := newSealedClient(t, tc.nodes[li].Addr(), ring, 1)
	other.connect("other")
	requireOp(t, other.lockFrame("short", time.Second), wire.OpLocked, "held for its TTL")
	time.Sleep(700 * time.Millisecond)
	requireOp(t, other.lockFrame("short", time.Second), wire.OpOK, "expired in the log's time")
	for i, s := range tc.nodes {
		require.Eventually(t, func() bool { return s.Stats().Isolations == 1 }, 2*time.Second, 5*time.Millisecond,
			"node %d applied the expiry (an isolation: the session lived on)", i)
	}
}

// readyz is the body of GET /readyz.
func readyz(t *testing.T, s *Server) string {
	code, body := httpGet(t, s, "/readyz")
	require.Equal(t, http.StatusOK, code, body)
	return body
}

// heldOn is the fence of key as node s's /locks shows it (0: not held there).
func heldOn(t *testing.T, s *Server, key string) uint64 {
	code, body := httpGet(t, s, "/locks")
	require.Equal(t, http.StatusOK, code, body)
	var v lockView
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	for _, r := range v.Locks {
		if r.Key == key {
			return r.Fence
		}
	}
	return 0
}

// TestClusterSnapshotCatchUp: the log is compacted behind snapshots; a node whose data
// directory was lost starts again empty and catches up from the leader's snapshot (its
// machine restored), then the cluster survives the loss of the old leader with that node
// in the quorum, the lock still held.
func TestClusterSnapshotCatchUp(t *testing.T) {
	ring := testRing(t)
	tc := newTestCluster(t, 3, ring, func(tc *testCluster) { tc.snapshotEvery = 16 })
	li := tc.leader()
	c := newSealedClient(t, tc.nodes[li].Addr(), ring, 1)
	c.connect("snap")
	lockID, f := c.lock("held", time.Minute)
	requireOp(t, f, wire.OpOK, "LOCK")
	fence := f.Fence
	for i := 0; i < 40; i++ { // entries past the threshold
		requireOp(t, c.touch(), wire.OpPong, "TOUCH")
	}
	require.NoError(t, tc.nodes[li].rep.raft.Load().Snapshot().Error(), "snapshot on the leader")

	fi := (li + 1) % 3
	require.NoError(t, tc.nodes[fi].Abort())
	tc.nodes[fi] = nil
	tc.dirs[fi] = t.TempDir() // its disk is lost
	tc.start(fi)
	require.Eventually(t, func() bool { return heldOn(t, tc.nodes[fi], "held") == fence }, 10*time.Second, 20*time.Millisecond,
		"the new node restored the lock from the snapshot")

	require.NoError(t, tc.nodes[li].Abort())
	tc.nodes[li] = nil
	ni := tc.leader()
	nc := sameSession(t, c, tc.nodes[ni].Addr(), ring)
	f = nc.call(func(b []byte) []byte { return wire.AppendUpdate(b, nc.id(), lockID, 60_000, "held") })
	requireOp(t, f, wire.OpOK, "UPDATE after the old leader's loss")
	require.Equal(t, fence, f.Fence)
}

// TestClusterIsolationOnLeaderOnce: an expired lock isolates its session; the isolation
// command runs on the leader only, once, and its end (through the log) frees the key on
// every node.
func TestClusterIsolationOnLeaderOnce(t *testing.T) {
	ring := testRing(t)
	tc := newTestCluster(t, 3, ring, func(tc *testCluster) { tc.isolateLog = filepath.Join(t.TempDir(), "isolated") })
	li := tc.leader()
	c := newSealedClient(t, tc.nodes[li].Addr(), ring, 1)
	c.connect("host-42")
	_, f := c.lock("k", 200*time.Millisecond)
	requireOp(t, f, wire.OpOK, "LOCK")
	other := newSealedClient(t, tc.nodes[li].Addr(), ring, 1)
	other.connect("other")
	require.Eventually(t, func() bool { return other.lockFrame("k", time.Second).Op == wire.OpOK }, 5*time.Second, 50*time.Millisecond,
		"the key is free once the isolation command has ended")
	for i, m := range tc.members {
		b, _ := os.ReadFile(tc.isolateLog + "-" + m.Name)
		if i == li {
			require.Equal(t, "host-42\n", string(b), "the leader ran the command once")
		} else {
			require.Empty(t, string(b), "a follower never runs it")
		}
		require.Eventually(t, func() bool { return heldOn(t, tc.nodes[i], "k") != f.Fence }, 2*time.Second, 10*time.Millisecond,
			"node %s applied the end of the isolation", m.Name)
	}
}

// TestClusterFailoverExtendsLeases: the log's time stands still while no node leads, so a
// lock outlives a failover by the election's length: never freed before its grant plus
// its TTL plus the time no node led.
func TestClusterFailoverExtendsLeases(t *testing.T) {
	ring := testRing(t)
	tc := newTestCluster(t, 3, ring)
	li := tc.leader()
	c := newSealedClient(t, tc.nodes[li].Addr(), ring, 1)
	c.connect("holder")
	const ttl = 400 * time.Millisecond
	sent := time.Now()
	_, f := c.lock("k", ttl)
	requireOp(t, f, wire.OpOK, "LOCK")
	killed := time.Now()
	require.NoError(t, tc.nodes[li].Abort())
	tc.nodes[li] = nil
	ni := tc.leader()
	elected := time.Now()
	other := newSealedClient(t, tc.nodes[ni].Addr(), ring, 1)
	other.connect("other")
	for other.lockFrame("k", time.Second).Op != wire.OpOK {
		require.Less(t, time.Since(sent), 10*time.Second, "the lock never expired")
		time.Sleep(5 * time.Millisecond)
	}
	freed := time.Now()
	t.Logf("TTL %v, no leader for %v, freed %v after the LOCK was sent", ttl, elected.Sub(killed), freed.Sub(sent))
	// elected is seen by polling, up to a scheduling delay after the log's time resumed:
	// 50ms of slack, far below the elections' 300ms and more that the check is about.
	require.GreaterOrEqual(t, freed.Sub(sent), ttl+elected.Sub(killed)-50*time.Millisecond,
		"freed before its TTL plus the election")
}

// TestClusterUnknownSessionNotLogged: requests naming no live session (anyone can send
// them) are answered by the leader as the machine would, DISCONNECTED, without a log
// entry: a flood of them costs no fsync on any node.
func TestClusterUnknownSessionNotLogged(t *testing.T) {
	ring := testRing(t)
	tc := newTestCluster(t, 3, ring)
	leader, r := tc.leaderLog()
	before := r.LastIndex()
	c := newSealedClient(t, leader.Addr(), ring, 1)
	c.session = 0xdead
	for i := 0; i < 20; i++ {
		requireOp(t, c.lockFrame("k", time.Second), wire.OpDisconnected, "LOCK of no session")
	}
	require.Equal(t, wire.OpPong, c.call(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpPing, c.id()) }).Op)
	time.Sleep(50 * time.Millisecond)
	// The new leader's own first entry may land in this window (it is offered once the
	// node leads); no entry may carry a datagram.
	require.Zero(t, loggedDatagrams(t, leader, before+1, r.LastIndex()), "nothing was logged")
	c.connect("real")
	requireOp(t, c.lockFrame("k", time.Second), wire.OpOK, "a live session's LOCK goes through the log")
	require.Eventually(t, func() bool { return loggedDatagrams(t, leader, before+1, r.LastIndex()) > 0 },
		2*time.Second, 5*time.Millisecond, "a live session's datagrams are logged")
}

// loggedDatagrams counts the datagrams in node s's log entries from index from to to.
func loggedDatagrams(t *testing.T, s *Server, from, to uint64) int {
	t.Helper()
	n := 0
	for i := from; i <= to; i++ {
		var l raft.Log
		require.NoError(t, s.rep.store.GetLog(i, &l))
		if l.Type != raft.LogCommand {
			continue
		}
		var er entryReader
		require.NoError(t, er.read(l.Data))
		n += er.n
	}
	return n
}

// TestClusterTicksAtTickRate: the leader logs an empty entry only once time alone
// changes the machine (a lease, a wait bound or a session's time-out ran out:
// machine.NextDue), at most one a tick, so that expiries happen with no traffic at all;
// never merely because something exists that time could change later (each entry costs
// every node an fsync: an idle session used to cost about forty a second).
func TestClusterTicksAtTickRate(t *testing.T) {
	ring := testRing(t)
	tc := newTestCluster(t, 3, ring)
	leader, r := tc.leaderLog()
	entriesIn := func(d time.Duration) uint64 {
		before := r.LastIndex()
		time.Sleep(d)
		return r.LastIndex() - before
	}
	// The new leader's own first entries may still be on their way: then none.
	require.Eventually(t, func() bool { return entriesIn(300*time.Millisecond) == 0 }, 5*time.Second, time.Millisecond,
		"no session, no lock: no entry")

	c := newSealedClient(t, leader.Addr(), ring, 1)
	c.connect("ticks")
	time.Sleep(100 * time.Millisecond) // the CONNECT's entry applied
	n := entriesIn(time.Second)
	t.Logf("one session, no traffic: %d entries in 1s", n)
	require.Zero(t, n, "a session that times out in 15s needs no entry now")

	_, f := c.lock("k", 300*time.Millisecond)
	requireOp(t, f, wire.OpOK, "LOCK")
	lockedAt := r.LastIndex()
	require.Eventually(t, func() bool { return leader.Stats().Isolations == 1 }, 3*time.Second, 5*time.Millisecond,
		"the lock expired with no traffic")
	n = r.LastIndex() - lockedAt
	t.Logf("a 300ms lease, no traffic: %d entries until its holder was isolated", n)
	require.LessOrEqual(t, n, uint64(3), "an entry when the lease ended (and when the isolation ran), not a tick's worth")
}
