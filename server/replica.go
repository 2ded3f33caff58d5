// The replica: this node's Raft (hashicorp/raft with its log and stable store in
// bbolt, raft-boltdb), the goroutine that proposes the loop's entries, and the one that
// tells the loop when this node leads. The machine itself stays the loop's: see fsm.go.

package server

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/netmutex/netmutex/internal/raftlink"
	"go.etcd.io/bbolt"
)

// proposalQueue is how many entries the loop may have handed to the proposer before it
// drops a batch (its clients retransmit; their replies carry BUSY). 128 batches is far
// more than Raft takes in one group commit (maxAppendEntries).
const proposalQueue = 128

// maxAppendEntries is how many entries one group commit (one fsync) and one
// AppendEntries may carry.
const maxAppendEntries = 256

// barrierTimeout bounds how long a new leader waits for the entries of earlier terms to
// be applied before it serves.
const barrierTimeout = 5 * time.Second

// replica is the node's Raft and its two goroutines.
type replica struct {
	cfg    ClusterConfig
	self   Member // as clients know this node
	origin uint64 // this process's mark on the entries it proposes: random per start
	// raft is set once Raft runs. The loop runs before it (restoring a snapshot goes
	// through the loop) and, until then, serves as a follower that knows no leader.
	raft      atomic.Pointer[raft.Raft]
	trans     *raft.NetworkTransport
	store     *raftboltdb.BoltStore
	notify    chan bool
	proposals chan []byte
	done      chan struct{}
	wg        sync.WaitGroup
}

// newOrigin draws the mark of this process's entries: only the process that proposed an
// entry answers its requests, never a restarted one replaying its log.
func newOrigin() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported systems
	}
	return binary.BigEndian.Uint64(b[:]) | 1
}

// newReplica is a cluster node's replica before its Raft runs.
func newReplica(cc ClusterConfig, origin uint64) *replica {
	rep := &replica{
		cfg:       cc,
		origin:    origin,
		notify:    make(chan bool, 4),
		proposals: make(chan []byte, proposalQueue),
		done:      make(chan struct{}),
	}
	rep.self, _ = cc.memberNamed(cc.Name)
	return rep
}

// startReplica starts Raft once the loop runs (restoring a snapshot goes through it).
func (s *Server) startReplica() error {
	rep := s.rep
	cc := rep.cfg
	me := cc.Members[cc.self()]
	dir := filepath.Join(s.cfg.DataDir, "raft")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("server: raft directory: %w", err)
	}
	logw := raftLogger(s.log)
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(dir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: time.Second},
	})
	if err != nil {
		return fmt.Errorf("server: raft log: %w", err)
	}
	rep.store = store
	fail := func(err error) error {
		if rep.trans != nil {
			rep.trans.Close()
			rep.trans = nil
		}
		store.Close()
		rep.store = nil
		return err
	}
	logs, err := raft.NewLogCache(maxAppendEntries*2, store)
	if err != nil {
		return fail(err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, logw)
	if err != nil {
		return fail(fmt.Errorf("server: raft snapshots: %w", err))
	}
	bind := cc.RaftBind
	if bind == "" {
		bind = me.RaftAddr
	}
	if rep.trans, err = newRaftTransport(bind, me.RaftAddr, s.cfg, logw); err != nil {
		return fail(err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(me.Name)
	rc.HeartbeatTimeout = cc.HeartbeatTimeout
	rc.ElectionTimeout = cc.ElectionTimeout
	rc.LeaderLeaseTimeout = cc.LeaderLeaseTimeout
	rc.CommitTimeout = 5 * time.Millisecond
	rc.MaxAppendEntries = maxAppendEntries
	rc.BatchApplyCh = true
	rc.SnapshotThreshold = cc.SnapshotThreshold
	rc.SnapshotInterval = 10 * time.Second
	rc.TrailingLogs = cc.SnapshotThreshold
	rc.NotifyCh = rep.notify
	rc.Logger = logw
	rc.NoLegacyTelemetry = true
	has, err := raft.HasExistingState(logs, store, snaps)
	if err != nil {
		return fail(err)
	}
	if !has {
		// Every node bootstraps with the same members: hashicorp/raft allows it, and no
		// node has to be started first.
		conf := raft.Configuration{}
		for _, m := range cc.Members {
			conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.RaftAddr)})
		}
		if err := raft.BootstrapCluster(rc, logs, store, snaps, rep.trans, conf); err != nil {
			return fail(fmt.Errorf("server: raft bootstrap: %w", err))
		}
	}
	r, err := raft.NewRaft(rc, &fsm{s: s}, logs, store, snaps, rep.trans)
	if err != nil {
		return fail(fmt.Errorf("server: raft: %w", err))
	}
	rep.raft.Store(r)
	rep.wg.Add(2)
	go rep.propose()
	go rep.watch(s)
	s.log.Info("cluster node started", "name", me.Name, "raft", me.RaftAddr, "raft_bind", bind,
		"members", len(cc.Members), "existing_state", has)
	return nil
}

// newRaftTransport is Raft's TCP transport, its streams authenticated and sealed with
// the key file's keys when there are keys (internal/raftlink).
func newRaftTransport(bind, advertise string, cfg Config, logw hclog.Logger) (*raft.NetworkTransport, error) {
	layer, err := raftlink.Listen(bind, advertise, cfg.Keys)
	if err != nil {
		return nil, fmt.Errorf("server: raft listen: %w", err)
	}
	return raft.NewNetworkTransportWithLogger(&trackedLayer{Layer: layer}, 3, 2*time.Second, logw), nil
}

// propose hands the loop's entries to Raft in order. Apply blocks while Raft's queue is
// full: that is the proposer's wait, never the loop's.
func (rep *replica) propose() {
	defer rep.wg.Done()
	for {
		select {
		case b := <-rep.proposals:
			rep.raft.Load().Apply(b, 0) // the reply leaves when the entry is applied, not here
		case <-rep.done:
			return
		}
	}
}

// watch tells the loop when this node starts and stops leading. A new leader serves only
// once every entry of earlier terms is applied (a barrier): its machine then has every
// session, lock and the log's time.
func (rep *replica) watch(s *Server) {
	defer rep.wg.Done()
	for {
		select {
		case leading := <-rep.notify:
			if leading {
				if err := rep.raft.Load().Barrier(barrierTimeout).Error(); err != nil {
					s.log.Warn("elected, but the barrier failed: not serving", "err", err)
					continue
				}
				if rep.raft.Load().State() != raft.Leader {
					continue
				}
			}
			s.toLoop(&clusterReq{kind: reqRole, leading: leading})
		case <-rep.done:
			return
		}
	}
}

// stop shuts Raft down while the loop still runs (the FSM hands entries to the loop),
// then ends the two goroutines and closes the log.
func (rep *replica) stop() error {
	var err error
	if r := rep.raft.Load(); r != nil {
		err = r.Shutdown().Error()
	}
	close(rep.done)
	rep.wg.Wait()
	if rep.trans != nil {
		if cerr := rep.trans.Close(); err == nil {
			err = cerr
		}
	}
	if rep.store != nil {
		if cerr := rep.store.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// leader is the client-facing Member of the current leader, if known and not this node.
func (rep *replica) leader() (Member, bool) {
	r := rep.raft.Load()
	if r == nil {
		return Member{}, false
	}
	_, id := r.LeaderWithID()
	if id == "" || string(id) == rep.cfg.Name {
		return Member{}, false
	}
	return rep.cfg.memberNamed(string(id))
}

// raftLogger routes Raft's warnings and errors (its info level logs every heartbeat) to
// the server's logger, one record a line.
func raftLogger(log *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{log},
		DisableTime: true})
}

// slogWriter writes each line hclog formats as one warning of log.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}

var errNoLoop = errors.New("server: stopped")

// unlimitedFences: in a cluster the fences come from the log, which is durable before
// anything is answered, so no block is reserved ahead.
const unlimitedFences = math.MaxUint64
