// Stats: the server's counters, kept by the loop and the isolation runs, read by anyone
// through Server.Stats.

package server

import "sync/atomic"

// Stats are counters since New. All are totals.
type Stats struct {
	Datagrams        uint64 // datagrams received, bad ones included
	BadDatagrams     uint64 // datagrams dropped as invalid, without reply
	Requests         uint64 // request frames handed to the state machine (PAD excluded)
	Replies          uint64 // reply frames sent
	Batches          uint64 // receive calls that returned datagrams; one Apply each
	Ticks            uint64 // wake-ups without traffic (read deadline)
	Grants           uint64 // locks granted
	Isolations       uint64 // sessions isolated
	IsolationsRun    uint64 // isolation command runs finished (any exit status)
	IsolationsFailed uint64 // runs that failed, timed out or could not start
	DatagramsOut     uint64 // reply datagrams sent
	SyscallsIn       uint64 // ReadBatch calls (one recvmmsg each on Linux)
	SyscallsOut      uint64 // WriteBatch calls (one sendmmsg each on Linux, if it takes all)
	SendErrors       uint64 // reply datagrams that could not be sent
}

type counters struct {
	datagrams, bad, requests, replies, batches, ticks, grants, isolations atomic.Uint64
	isoRun, isoFailed, datagramsOut, syscallsIn, syscallsOut, sendErrors  atomic.Uint64
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Datagrams:        c.datagrams.Load(),
		BadDatagrams:     c.bad.Load(),
		Requests:         c.requests.Load(),
		Replies:          c.replies.Load(),
		Batches:          c.batches.Load(),
		Ticks:            c.ticks.Load(),
		Grants:           c.grants.Load(),
		Isolations:       c.isolations.Load(),
		IsolationsRun:    c.isoRun.Load(),
		IsolationsFailed: c.isoFailed.Load(),
		DatagramsOut:     c.datagramsOut.Load(),
		SyscallsIn:       c.syscallsIn.Load(),
		SyscallsOut:      c.syscallsOut.Load(),
		SendErrors:       c.sendErrors.Load(),
	}
}
