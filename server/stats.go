// Stats: the server's counters, kept by the loop and the isolation runs, read by anyone
// through Server.Stats.

package server

import "sync/atomic"

// Stats are counters since New. All are totals.
type Stats struct {
	Datagrams         uint64 // datagrams received, bad ones included
	BadDatagrams      uint64 // datagrams dropped as invalid, without reply (the reasons below included)
	BadAuth           uint64 // datagrams that did not authenticate: plain with keys, sealed without, or not opening (some are answered AUTH, see AuthRefused)
	BadPeer           uint64 // datagrams for a session from another address (no keys), or under another key or nonce prefix: dropped
	Replays           uint64 // sealed datagrams whose counter the session's replay window had seen: dropped
	AuthRefused       uint64 // ERROR AUTH replies sent
	Cookies           uint64 // COOKIE replies sent (CONNECTs without a valid cookie)
	RateLimited       uint64 // CONNECTs refused RATE_LIMITED, and AUTH replies left out, over the per-address rate
	Requests          uint64 // request frames handed to the state machine (PAD excluded)
	Replies           uint64 // reply frames sent
	Batches           uint64 // receive calls that returned datagrams; one Apply each
	Ticks             uint64 // wake-ups without traffic (read deadline)
	Grants            uint64 // locks granted
	Isolations        uint64 // sessions isolated
	IsolationsRun     uint64 // isolation command runs finished (any exit status)
	IsolationsFailed  uint64 // runs that failed, timed out or could not start
	DatagramsOut      uint64 // reply datagrams sent
	SyscallsIn        uint64 // reads that returned datagrams (a recvmmsg each on Linux)
	SyscallsOut       uint64 // WriteBatch calls (one sendmmsg each on Linux, if it takes all)
	SendErrors        uint64 // reply datagrams that could not be sent
	Pushed            uint64 // grants sent to waiters unasked (included in Replies)
	PushDropped       uint64 // grants to waiters not sent: the session ended in the same batch
	IsolationsStarted uint64 // isolation command runs started
	Fsyncs            uint64 // fsyncs of the data directory's state file and of the directory (two per state write)
}

type counters struct {
	datagrams, bad, requests, replies, batches, ticks, grants, isolations atomic.Uint64
	isoRun, isoFailed, datagramsOut, syscallsIn, syscallsOut, sendErrors  atomic.Uint64
	badAuth, badPeer, replays, authRefused, cookies, rateLimited          atomic.Uint64
	pushed, pushDropped, isoStarted                                       atomic.Uint64
	badReason                                                             [numBad]atomic.Uint64 // partitions bad
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Datagrams:         c.datagrams.Load(),
		BadDatagrams:      c.bad.Load(),
		BadAuth:           c.badAuth.Load(),
		BadPeer:           c.badPeer.Load(),
		Replays:           c.replays.Load(),
		AuthRefused:       c.authRefused.Load(),
		Cookies:           c.cookies.Load(),
		RateLimited:       c.rateLimited.Load(),
		Requests:          c.requests.Load(),
		Replies:           c.replies.Load(),
		Batches:           c.batches.Load(),
		Ticks:             c.ticks.Load(),
		Grants:            c.grants.Load(),
		Isolations:        c.isolations.Load(),
		IsolationsRun:     c.isoRun.Load(),
		IsolationsFailed:  c.isoFailed.Load(),
		DatagramsOut:      c.datagramsOut.Load(),
		SyscallsIn:        c.syscallsIn.Load(),
		SyscallsOut:       c.syscallsOut.Load(),
		SendErrors:        c.sendErrors.Load(),
		Pushed:            c.pushed.Load(),
		PushDropped:       c.pushDropped.Load(),
		IsolationsStarted: c.isoStarted.Load(),
		Fsyncs:            s.store.fsyncs.Load(),
	}
}
