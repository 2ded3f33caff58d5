package raftlink

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/seal"
)

// logFSM records the entries it applies.
type logFSM struct {
	mu      sync.Mutex
	applied []string
}

func (f *logFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(l.Data))
	return nil
}

func (f *logFSM) Snapshot() (raft.FSMSnapshot, error) { return nopSnapshot{}, nil }
func (f *logFSM) Restore(r io.ReadCloser) error       { return r.Close() }

func (f *logFSM) has(entry string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.applied {
		if e == entry {
			return true
		}
	}
	return false
}

type nopSnapshot struct{}

func (nopSnapshot) Persist(s raft.SnapshotSink) error { return s.Close() }
func (nopSnapshot) Release()                          {}

// TestRaftCluster runs three raft nodes over Layers on distinct loopback IPs: they elect
// a leader and replicate an entry to every FSM.
func TestRaftCluster(t *testing.T) {
	for _, keyed := range []bool{true, false} {
		name := map[bool]string{true: "keyed", false: "plain"}[keyed]
		t.Run(name, func(t *testing.T) {
			var keys *seal.Keyring
			if keyed {
				keys = keyring(t, secretA)
			}
			runCluster(t, keys)
		})
	}
}

func runCluster(t *testing.T, keys *seal.Keyring) {
	ips := []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"}
	layers := make([]*Layer, len(ips))
	var servers []raft.Server
	for i, ip := range ips {
		l, err := Listen(ip+":0", "", keys)
		require.NoError(t, err)
		layers[i] = l
		servers = append(servers, raft.Server{
			ID:      raft.ServerID(ip),
			Address: raft.ServerAddress(l.Addr().String()),
		})
	}
	nodes := make([]*raft.Raft, len(ips))
	fsms := make([]*logFSM, len(ips))
	transports := make([]*raft.NetworkTransport, len(ips))
	t.Cleanup(func() {
		for _, r := range nodes {
			if r != nil {
				r.Shutdown().Error()
			}
		}
		for i, tr := range transports {
			if tr != nil {
				tr.CloseStreams()
				tr.Close()
			} else {
				layers[i].Close()
			}
		}
	})
	for i, ip := range ips {
		conf := raft.DefaultConfig()
		conf.LocalID = raft.ServerID(ip)
		conf.HeartbeatTimeout = 100 * time.Millisecond
		conf.ElectionTimeout = 100 * time.Millisecond
		conf.LeaderLeaseTimeout = 100 * time.Millisecond
		conf.CommitTimeout = 5 * time.Millisecond
		conf.Logger = hclog.NewNullLogger()
		store := raft.NewInmemStore()
		snaps := raft.NewInmemSnapshotStore()
		transports[i] = raft.NewNetworkTransport(layers[i], 3, 2*time.Second, io.Discard)
		require.NoError(t, raft.BootstrapCluster(conf, store, store, snaps, transports[i],
			raft.Configuration{Servers: servers}))
		fsms[i] = &logFSM{}
		r, err := raft.NewRaft(conf, fsms[i], store, store, snaps, transports[i])
		require.NoError(t, err)
		nodes[i] = r
	}

	var leader *raft.Raft
	require.Eventually(t, func() bool {
		for _, r := range nodes {
			if r.State() == raft.Leader {
				leader = r
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "no leader elected")
	require.NoError(t, leader.Apply([]byte("entry"), 2*time.Second).Error())
	require.Eventually(t, func() bool {
		for _, f := range fsms {
			if !f.has("entry") {
				return false
			}
		}
		return true
	}, 5*time.Second, 10*time.Millisecond, "entry not applied everywhere")
}
