// Package store is the fenced job store of examples/scheduler: the resource the
// scheduler's locks protect. It keeps one record per job and rejects every write whose
// fencing token is lower than the highest it has seen for that job, which is what makes
// a lock service with TTLs safe: a worker that lost its lock without knowing it (it was
// paused, partitioned or slow, and its lease ran out) still holds its old token, and its
// late write is refused here instead of overwriting the newer holder's work.
//
// Two implementations: Dir, a file per job in a directory, shared by worker processes
// (each update is read-check-write under an flock of the job, and the new record
// replaces the old one with a rename, so a reader or a crash never sees half a record);
// and Memory, for workers that all run in one process.
package store

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrStaleFence is returned by Put for a write whose fence is lower than the highest the
// store has seen for the job: a newer holder has written, and the writer must stop.
var ErrStaleFence = errors.New("store: stale fence: a newer lock holder has written this job")

// States of a job's record.
const (
	Started = "started" // a holder began the job
	Done    = "done"    // a holder finished it; Result is its output
)

// Write is one write to a job's record, carrying the writer's fencing token.
type Write struct {
	Fence  uint64    `json:"fence"`
	Worker string    `json:"worker"`
	State  string    `json:"state"`
	Result string    `json:"result,omitempty"`
	At     time.Time `json:"at"` // the writer's clock when it made the write
}

// Record is what the store holds for a job: the last accepted write, the highest fence
// seen, and every write it accepted and rejected, in order (the history a test or an
// operator reads to see who did the job).
type Record struct {
	Job      string  `json:"job"`
	Fence    uint64  `json:"fence"` // the highest fence accepted
	State    string  `json:"state"`
	Worker   string  `json:"worker"`
	Result   string  `json:"result,omitempty"`
	Writes   []Write `json:"writes"`
	Rejected []Write `json:"rejected,omitempty"`
}

// Store is a fenced store of job records.
type Store interface {
	// Get returns the job's record, and false if nothing was written to it yet.
	Get(job string) (Record, bool, error)
	// Put applies w to the job's record if w.Fence is at least the highest fence seen
	// for the job (equal: the same holder writing again), and otherwise records the
	// rejection and returns ErrStaleFence.
	Put(job string, w Write) error
}

// apply is the fencing rule, shared by both stores.
func apply(rec *Record, job string, w Write) error {
	rec.Job = job
	if w.Fence < rec.Fence {
		rec.Rejected = append(rec.Rejected, w)
		return fmt.Errorf("%w (job %s: fence %d < %d)", ErrStaleFence, job, w.Fence, rec.Fence)
	}
	rec.Fence, rec.State, rec.Worker, rec.Result = w.Fence, w.State, w.Worker, w.Result
	rec.Writes = append(rec.Writes, w)
	return nil
}

// Memory is a Store in this process's memory.
type Memory struct {
	mu   sync.Mutex
	recs map[string]*Record
}

// NewMemory returns an empty Memory store.
func NewMemory() *Memory { return &Memory{recs: map[string]*Record{}} }

// Get implements Store.
func (m *Memory) Get(job string) (Record, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.recs[job]
	if !ok {
		return Record{}, false, nil
	}
	return clone(rec), true, nil
}

// Put implements Store.
func (m *Memory) Put(job string, w Write) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.recs[job]
	if !ok {
		rec = &Record{}
		m.recs[job] = rec
	}
	return apply(rec, job, w)
}

func clone(r *Record) Record {
	c := *r
	c.Writes = append([]Write(nil), r.Writes...)
	c.Rejected = append([]Write(nil), r.Rejected...)
	return c
}
