package tests

// A three-node netmutexd cluster for the cluster tests: each node a process bound on a
// loopback IP of its own (127.0.0.11, .12, .13), a UDP fault proxy in front of its client
// address and a TCP proxy in front of its Raft address. -initial-cluster lists the
// proxies, so every datagram and every Raft stream goes through them: a partition is
// blackholing, and Raft dials from the node's own IP, which the TCP proxies can tell
// apart.

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/faultproxy"
	"github.com/stretchr/testify/require"
)

// clusterLeaderWait bounds an election: a heartbeat timeout (300ms), a randomised wait
// of up to as much again and a barrier take about a second; under -race and on two cores
// several times that.
const clusterLeaderWait = 15 * time.Second

// clusterNode is one node of a testCluster.
type clusterNode struct {
	name    string
	ip      netip.Addr // the node binds its client and Raft addresses on it
	udpBind string     // -listen: the real client address
	d       *daemon
	udp     *faultproxy.Proxy    // clients' way in
	tcp     *faultproxy.TCPProxy // the other nodes' Raft way in
	cut     bool                 // partitioned
}

// clusterEvent is something the test did to a node, at a wall-clock time: the server's
// log lines carry wall-clock times too.
type clusterEvent struct {
	node int
	kind string // "kill", "stop", "partition", "heal", "start"
	at   time.Time
}

// testCluster is three netmutexd processes replicated with Raft, behind proxies.
type testCluster struct {
	t       *testing.T
	keyFile string
	nodes   []*clusterNode
	mu      sync.Mutex
	events  []clusterEvent
}

// clusterIP is the loopback IP of node i: one per node, so that the TCP proxies see
// which node a Raft connection comes from. The bench uses 127.0.0.2x.
func clusterIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(11 + i)}) }

// freeAddrs returns a UDP and a TCP address on ip, both free a moment ago. Nothing but
// this cluster binds these IPs, so they stay free until the node binds them.
func freeAddrs(t *testing.T, ip netip.Addr) (udp, tcp string) {
	t.Helper()
	u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	require.NoError(t, err, "loopback IP %v", ip)
	defer u.Close()
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	require.NoError(t, err, "loopback IP %v", ip)
	defer l.Close()
	return u.LocalAddr().String(), l.Addr().String()
}

// startCluster starts three nodes with keyFile, faults on both directions of every UDP
// proxy, and args added to each node's flags; it returns once a leader serves.
func startCluster(t *testing.T, keyFile string, faults faultproxy.Faults, args ...string) *testCluster {
	t.Helper()
	bin := netmutexdBin(t)
	c := &testCluster{t: t, keyFile: keyFile}
	var members []string
	for i := 0; i < 3; i++ {
		n := &clusterNode{name: fmt.Sprintf("n%d", i+1), ip: clusterIP(i)}
		var tcpBind string
		n.udpBind, tcpBind = freeAddrs(t, n.ip)
		var err error
		n.udp, err = faultproxy.New(faultproxy.Config{Upstream: n.udpBind, ToServer: faults, ToClient: faults, Logf: t.Logf})
		require.NoError(t, err)
		t.Cleanup(func() { n.udp.Close() }) // after the daemons: cleanups run last first
		n.tcp, err = faultproxy.NewTCP("127.0.0.1:0", tcpBind)
		require.NoError(t, err)
		t.Cleanup(func() { n.tcp.Close() })
		members = append(members, fmt.Sprintf("%s=%s/%s", n.name, n.udp.Addr(), n.tcp.Addr()))
		n.d = newDaemon(t, bin, "-name", n.name, "-listen-raft", tcpBind) // more flags below, once every proxy is known
		n.d.addr = n.udpBind                                              // -listen
		c.nodes = append(c.nodes, n)
	}
	initial := strings.Join(members, ",")
	for _, n := range c.nodes {
		n.d.args = append(n.d.args, "-initial-cluster", initial, "-key-file", keyFile, "-log-level", "info")
		n.d.args = append(n.d.args, args...)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs(60)
		}
	})
	for i := range c.nodes {
		c.start(i)
	}
	c.waitLeader()
	return c
}

// dumpLogs logs the last n lines of every node's log, and keeps a copy of each beyond
// the test's temporary directory.
func (c *testCluster) dumpLogs(n int) {
	stamp := time.Now().UnixNano()
	for _, node := range c.nodes {
		b, err := os.ReadFile(node.d.logPath)
		if err != nil {
			continue
		}
		keep := filepath.Join(os.TempDir(), fmt.Sprintf("netmutex-%s-%s-%d.log", strings.ReplaceAll(c.t.Name(), "/", "_"), node.name, stamp))
		if os.WriteFile(keep, b, 0o644) != nil {
			keep = node.d.logPath + " (gone with the test)"
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		c.t.Logf("--- %s: the last %d of %d lines of %s\n%s", node.name, min(n, len(lines)), len(lines), keep,
			strings.Join(lines[max(0, len(lines)-n):], "\n"))
	}
}

// proxyFigures says, per node, how many datagrams its UDP proxy passed each way: which
// nodes a client spoke to.
func (c *testCluster) proxyFigures() string {
	var f []string
	for _, n := range c.nodes {
		st := n.udp.Stats()
		f = append(f, fmt.Sprintf("%s: %d flows, %d in, %d out", n.name, st.Flows, st.ToServer.Forwarded, st.ToClient.Forwarded))
	}
	return strings.Join(f, "; ")
}

// addrs are the proxies' client addresses, node order: what clients are given.
func (c *testCluster) addrs() []string {
	var a []string
	for _, n := range c.nodes {
		a = append(a, n.udp.Addr().String())
	}
	return a
}

func (c *testCluster) note(i int, kind string) {
	c.mu.Lock()
	c.events = append(c.events, clusterEvent{node: i, kind: kind, at: time.Now()})
	c.mu.Unlock()
}

// start starts node i; clients may reach it at once, before its Raft runs
// (TestClusterRestartUnderTraffic).
func (c *testCluster) start(i int) {
	c.t.Helper()
	c.nodes[i].d.start()
	c.note(i, "start")
}

// raftStartedRE is the line a node logs once its Raft runs.
var raftStartedRE = regexp.MustCompile(`msg="cluster node started"`)

// waitRaftStarted waits until node i's process has logged that its Raft runs.
func (c *testCluster) waitRaftStarted(i int) {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(c.nodes[i].d.logPath)
		s := string(b)
		if at := strings.LastIndex(s, `msg="netmutexd serving"`); at >= 0 && raftStartedRE.MatchString(s[at:]) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	c.t.Fatalf("%s: no 'cluster node started' within 10s (log %s)", c.nodes[i].name, c.nodes[i].d.logPath)
}

// kill stops node i with SIGKILL: a crash.
func (c *testCluster) kill(i int) {
	c.note(i, "kill")
	c.nodes[i].d.kill()
}

// stop stops node i with SIGTERM, as an operator would, and waits until it has exited.
func (c *testCluster) stop(i int) {
	c.t.Helper()
	d := c.nodes[i].d
	if d.cmd == nil {
		return
	}
	c.note(i, "stop")
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		d.kill()
		c.t.Fatalf("%s did not stop within 15s of SIGTERM (log %s)", c.nodes[i].name, d.logPath)
	}
	d.cmd = nil
}

// partition cuts node i off: no client reaches it, no node hears it or is heard by it.
func (c *testCluster) partition(i int) {
	n := c.nodes[i]
	c.note(i, "partition")
	n.cut = true
	n.udp.Blackhole(faultproxy.ToServer, true)
	n.udp.Blackhole(faultproxy.ToClient, true)
	n.tcp.Blackhole(true)
	for j, o := range c.nodes {
		if j != i {
			o.tcp.BlackholeFrom(n.ip, true)
		}
	}
}

// heal undoes partition(i).
func (c *testCluster) heal(i int) {
	n := c.nodes[i]
	for j, o := range c.nodes {
		if j != i {
			o.tcp.BlackholeFrom(n.ip, false)
		}
	}
	n.tcp.Blackhole(false)
	n.udp.Blackhole(faultproxy.ToServer, false)
	n.udp.Blackhole(faultproxy.ToClient, false)
	n.cut = false
	c.note(i, "heal")
}

// rollRestart stops and restarts every node in turn, waiting each time until a leader
// serves again and the restarted node has had a heartbeat timeout to catch up. It calls
// after, if not nil, after each node's restart.
func (c *testCluster) rollRestart(after func(i int)) {
	c.t.Helper()
	for i := range c.nodes {
		c.stop(i)
		c.start(i)
		c.waitLeader()
		time.Sleep(300 * time.Millisecond)
		if after != nil {
			after(i)
		}
	}
}

// roleRE matches the lines that tell a node's role, with their time.
var roleRE = regexp.MustCompile(`^time=(\S+) level=\S+ msg="(cluster: leading|cluster: no longer leading|netmutexd serving)"`)

// roleLine is one such line.
type roleLine struct {
	at   time.Time
	what string // "leading", "no longer leading", "serving" (a process started)
}

// roles reads node i's log: every role line so far, in order.
func (c *testCluster) roles(i int) []roleLine {
	f, err := os.Open(c.nodes[i].d.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []roleLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := roleRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		out = append(out, roleLine{at: at, what: strings.TrimPrefix(strings.TrimPrefix(m[2], "cluster: "), "netmutexd ")})
	}
	return out
}

// alive: node i's process runs.
func (c *testCluster) alive(i int) bool {
	d := c.nodes[i].d
	if d.cmd == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// leads: node i runs, is not cut off, and its process's last role line is "leading".
func (c *testCluster) leads(i int) bool {
	if !c.alive(i) || c.nodes[i].cut {
		return false
	}
	leading := false
	for _, r := range c.roles(i) {
		switch r.what {
		case "leading":
			leading = true
		default:
			leading = false
		}
	}
	return leading
}

// waitLeader waits until exactly one node that runs and is not cut off says it leads,
// and returns it. The leader logs "cluster: leading" once it serves (after its barrier).
func (c *testCluster) waitLeader() int {
	c.t.Helper()
	deadline := time.Now().Add(clusterLeaderWait)
	for time.Now().Before(deadline) {
		leader, n := -1, 0
		for i := range c.nodes {
			if c.leads(i) {
				leader, n = i, n+1
			}
		}
		if n == 1 {
			return leader
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no leader within %v; logs: %s", clusterLeaderWait, c.logPaths())
	return -1
}

// waitFollower waits until node i no longer says it leads (a partitioned leader steps
// down once it has not heard a quorum for the lease timeout).
func (c *testCluster) waitFollower(i int) {
	c.t.Helper()
	deadline := time.Now().Add(clusterLeaderWait)
	for time.Now().Before(deadline) {
		rs := c.roles(i)
		if len(rs) == 0 || rs[len(rs)-1].what != "leading" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("%s still leads %v later (log %s)", c.nodes[i].name, clusterLeaderWait, c.nodes[i].d.logPath)
}

func (c *testCluster) logPaths() string {
	var p []string
	for _, n := range c.nodes {
		p = append(p, n.d.logPath)
	}
	return strings.Join(p, " ")
}
