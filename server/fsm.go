// The Raft FSM: committed entries, snapshots and restores are handed to the loop, which
// owns the machine (and the reply buffers, the sessions' far ends, the HTTP scans), so
// nothing of the machine is shared between goroutines.

package server

import (
	"encoding/binary"
	"errors"
	"io"
	"time"

	"github.com/hashicorp/raft"
)

// Requests from Raft's goroutines to the loop.
const (
	reqApply    = iota + 1 // apply committed entries
	reqSnapshot            // encode the machine
	reqRestore             // replace the machine
	reqRole                // this node starts or stops leading
)

// clusterReq is one request to the loop; done is closed when the loop has served it.
type clusterReq struct {
	kind    int
	logs    [][]byte // reqApply
	data    []byte   // reqSnapshot: the answer; reqRestore: the snapshot
	leading bool     // reqRole
	err     error
	done    chan struct{}
}

// clusterQueue is the capacity of the loop's cluster request channel: Raft's FSM
// goroutine waits for each of its requests, so a few suffice.
const clusterQueue = 8

// toLoop hands req to the loop and waits until it is served (or the loop has ended).
func (s *Server) toLoop(req *clusterReq) error {
	req.done = make(chan struct{})
	select {
	case s.clusterReqs <- req:
	case <-s.loopDone:
		return errNoLoop
	}
	// A read deadline in the past ends the loop's read at once (as ask does).
	s.conn.SetReadDeadline(time.Now())
	select {
	case <-req.done:
		return req.err
	case <-s.loopDone:
		return errNoLoop
	}
}

// fsm is the raft.BatchingFSM of a cluster node.
type fsm struct{ s *Server }

var _ raft.BatchingFSM = (*fsm)(nil)

func (f *fsm) Apply(l *raft.Log) any {
	f.ApplyBatch([]*raft.Log{l})
	return nil
}

// ApplyBatch hands the commands among logs to the loop in one request: Raft calls it
// with every entry committed since its last call.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	data := make([][]byte, 0, len(logs))
	for _, l := range logs {
		if l.Type == raft.LogCommand {
			data = append(data, l.Data)
		}
	}
	if len(data) > 0 {
		if err := f.s.toLoop(&clusterReq{kind: reqApply, logs: data}); err != nil {
			f.s.log.Warn("entries not applied: the loop has stopped", "entries", len(data))
		}
	}
	return make([]any, len(logs))
}

// Snapshot encodes the machine on the loop; Persist writes the bytes.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	req := &clusterReq{kind: reqSnapshot}
	if err := f.s.toLoop(req); err != nil {
		return nil, err
	}
	return snapshotBytes(req.data), nil
}

// Restore replaces the machine with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	return f.s.toLoop(&clusterReq{kind: reqRestore, data: b})
}

type snapshotBytes []byte

func (b snapshotBytes) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(b); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snapshotBytes) Release() {}

// The snapshot of a cluster node: a header with the log's time, then the machine.
//
//	0  4  magic "NMXC"
//	4  1  version (1)
//	5  8  the log time of the last applied entry
//	13 .. the machine (appendSnapshot)
const (
	clusterSnapMagic   = "NMXC"
	clusterSnapVersion = 1
	clusterSnapHeader  = 13
)

// encodeSnapshot encodes the loop's machine with the log's time.
func (s *Server) encodeSnapshot() []byte {
	b := make([]byte, 0, 4096)
	b = append(b, clusterSnapMagic...)
	b = append(b, clusterSnapVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(s.cl.lastNow))
	return s.m.appendSnapshot(b)
}

// errBadClusterSnapshot: a snapshot that is not a cluster node's of this version.
var errBadClusterSnapshot = errors.New("server: not a cluster snapshot of this version")

// restoreSnapshot replaces the loop's machine with the one encoded in b.
func (s *Server) restoreSnapshot(b []byte) error {
	if len(b) < clusterSnapHeader || string(b[:4]) != clusterSnapMagic || b[4] != clusterSnapVersion {
		return errBadClusterSnapshot
	}
	m, err := restoreMachine(s.mcfg, b[clusterSnapHeader:])
	if err != nil {
		return err
	}
	s.endScan(nil) // a GET /locks scan walks the machine being replaced
	m.SetFenceLimit(unlimitedFences)
	s.m = m
	s.cl.lastNow = int64(binary.BigEndian.Uint64(b[5:]))
	s.isoSeen = m.Isolations()
	return nil
}
