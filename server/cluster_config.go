// The cluster's configuration: the members, this node's name, and Raft's timings.

package server

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ClusterMember is one node of a cluster: its name, the UDP address clients reach it at
// and the TCP address of its Raft traffic.
type ClusterMember struct {
	Name       string
	ClientAddr string
	RaftAddr   string
}

// ClusterConfig makes a Server one node of a cluster replicated with Raft
// (hashicorp/raft): the leader serves, followers redirect, and sessions, locks, queues
// and fences survive the loss of a minority of the nodes.
type ClusterConfig struct {
	// Name is this node's name in Members.
	Name string
	// Members is every node of the cluster, the same list on each node. A node's server
	// id (in CONNECTED and REDIRECT) is its place in Members, from 1.
	Members []ClusterMember
	// RaftBind is the TCP address to bind Raft to; empty: this member's RaftAddr. They
	// differ only when something (a test's fault proxy) sits in front of the node.
	RaftBind string
	// HeartbeatTimeout is how long a follower waits without hearing from the leader
	// before it stands for election; ElectionTimeout bounds an election; a leader that
	// has not heard from a quorum for LeaderLeaseTimeout steps down. 0: the defaults.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot (and compaction of
	// the log); 0: DefaultSnapshotThreshold.
	SnapshotThreshold uint64
}

// Cluster defaults. A loopback or LAN cluster hears its leader within a millisecond, so
// a 300 ms heartbeat timeout still tolerates long pauses while keeping a failover (the
// timeout, a randomised wait of up to the same again, one vote round trip) under a
// second. The lease is half the heartbeat timeout, as hashicorp/raft requires it below.
const (
	DefaultHeartbeatTimeout   = 300 * time.Millisecond
	DefaultElectionTimeout    = 300 * time.Millisecond
	DefaultLeaderLeaseTimeout = 150 * time.Millisecond
	// DefaultSnapshotThreshold: a log entry is one batch of datagrams, so 8,192 entries
	// is seconds of full load, and a snapshot's cost is that of the state, not the log.
	DefaultSnapshotThreshold = 8192
)

// Cluster configuration errors.
var (
	ErrClusterSelf    = errors.New("server: cluster: Name is not one of Members")
	ErrClusterMembers = errors.New("server: cluster: Members must have distinct non-empty names and addresses")
	ErrClusterTimings = errors.New("server: cluster: LeaderLeaseTimeout must not exceed HeartbeatTimeout")
	// ErrClusterRedirect: a cluster node knows its leader; Redirect is for a single
	// server made a follower by hand.
	ErrClusterRedirect = errors.New("server: Redirect and Cluster are exclusive")
)

func (c ClusterConfig) withDefaults() ClusterConfig {
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = DefaultElectionTimeout
	}
	if c.LeaderLeaseTimeout == 0 {
		c.LeaderLeaseTimeout = min(DefaultLeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	return c
}

// Validate checks the members and this node's place among them, defaults not applied.
func (c *ClusterConfig) Validate() error {
	cc := c.withDefaults()
	return cc.validate()
}

func (c *ClusterConfig) validate() error {
	seen := map[string]bool{}
	for _, m := range c.Members {
		if m.Name == "" || m.ClientAddr == "" || m.RaftAddr == "" ||
			seen["n:"+m.Name] || seen["c:"+m.ClientAddr] || seen["r:"+m.RaftAddr] {
			return ErrClusterMembers
		}
		seen["n:"+m.Name], seen["c:"+m.ClientAddr], seen["r:"+m.RaftAddr] = true, true, true
	}
	if c.self() < 0 {
		return ErrClusterSelf
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		return ErrClusterTimings
	}
	return nil
}

// self is this node's index in Members, -1 if absent.
func (c *ClusterConfig) self() int {
	for i, m := range c.Members {
		if m.Name == c.Name {
			return i
		}
	}
	return -1
}

// servers is the cluster as CONNECTED tells clients of it.
func (c *ClusterConfig) servers() []Member {
	out := make([]Member, len(c.Members))
	for i, m := range c.Members {
		out[i] = Member{ID: uint16(i + 1), Addr: m.ClientAddr}
	}
	return out
}

// memberNamed is the client-facing Member of the node named name.
func (c *ClusterConfig) memberNamed(name string) (Member, bool) {
	for i, m := range c.Members {
		if m.Name == name {
			return Member{ID: uint16(i + 1), Addr: m.ClientAddr}, true
		}
	}
	return Member{}, false
}

// ParseInitialCluster reads netmutexd's -initial-cluster:
// NAME=CLIENT_UDP_ADDRESS/RAFT_TCP_ADDRESS entries separated by commas.
func ParseInitialCluster(s string) ([]ClusterMember, error) {
	var out []ClusterMember
	for _, part := range strings.Split(s, ",") {
		name, addrs, ok := strings.Cut(strings.TrimSpace(part), "=")
		client, raftAddr, ok2 := strings.Cut(addrs, "/")
		if !ok || !ok2 || name == "" || client == "" || raftAddr == "" {
			return nil, fmt.Errorf("entry %q must be NAME=CLIENT_UDP_ADDRESS/RAFT_TCP_ADDRESS", part)
		}
		out = append(out, ClusterMember{Name: name, ClientAddr: client, RaftAddr: raftAddr})
	}
	return out, nil
}
