// The loop: one goroutine reads a batch of datagrams, turns them into commands, applies
// them to the machine in one Apply, and sends the replies; it owns the machine.

package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
)

// now is the loop's clock: monotonic nanoseconds since New.
func (s *Server) now() int64 { return int64(time.Since(s.epoch)) }

// loop is the server: read a batch, apply it, send the replies, until the socket closes.
// The batches are handled inside ReadLoop (onBatch); it returns on a read deadline (a
// tick, or another goroutine's request: ask, toLoop) and when the socket closes.
func (s *Server) loop() {
	defer close(s.loopDone)
	defer s.collectReservation(true) // the store is the stopper's once the loop is done
	defer s.dropQueuedIsolations()
	defer s.endScan(nil)
	for {
		s.serveQueued()
		err := s.bc.ReadLoop(s.in, s.onBatchFn)
		s.poller = batchio.Poller{}
		switch {
		case err == nil: // stopping: the next read finds the socket closed
		case errors.Is(err, os.ErrDeadlineExceeded):
			s.stats.ticks.Add(1)
			// The deadline may be ask's, in the past: armDeadline sets it anew.
			s.deadline = time.Unix(0, 1)
			s.took(0)
			s.process(0, s.now())
			s.send()
		case errors.Is(err, net.ErrClosed):
			return
		default:
			s.log.Warn("receive failed", "err", err)
		}
	}
}

// onBatch handles the n datagrams ReadLoop read (0: a poll found nothing): apply them,
// send the replies, serve what other goroutines asked meanwhile. Then it decides the
// next read (batchio.Poller): under load, or with SpinWait, it takes the next requests
// without parking in the netpoller, yielding between tries; a spin stops when a tick is
// due, so that the read reports it.
func (s *Server) onBatch(n int) batchio.ReadAction {
	if s.stopping.Load() {
		return batchio.Stop
	}
	busy := false
	spin := time.Duration(0) // a spin starts only after a batch that carried requests
	if n == 0 {
		s.lastFull = false // caught up: nothing was waiting
		if len(s.reqs) > 0 || len(s.clusterReqs) > 0 {
			s.serveQueued()
		}
	} else {
		s.stats.syscallsIn.Add(1)
		s.stats.batches.Add(1)
		s.metrics.dgmsPerRecv.observe(n)
		s.took(n)
		s.process(n, s.now())
		busy = len(s.cmds) > 1
		if len(s.cmds) > 0 {
			// Garbage, refused or forged datagrams never start a spin: they cost the
			// server what they always did, not SpinWait of CPU each.
			spin = s.cfg.SpinWait
		}
		s.send()
		s.serveQueued()
	}
	return s.poller.Next(n, busy, s.now(), spin, s.cfg.SpinWait == 0 || !s.tickDue())
}

// tickDue tells that the read deadline armed for a tick has passed: a poll stops, so
// that the read reports it and the tick's work is done.
func (s *Server) tickDue() bool {
	return s.deadline.After(time.Unix(0, 1)) && time.Now().After(s.deadline)
}

// serveQueued serves the requests of other goroutines and arms the read deadline for
// the state they leave: an entry Raft committed can make an idle machine need ticks. A
// request queued after the last check comes with a read deadline in the past (ask,
// toLoop), set after the deadline armed here, which ends the next read at once.
func (s *Server) serveQueued() {
	for {
		s.serveRequests()
		s.armDeadline()
		if len(s.reqs) == 0 && len(s.clusterReqs) == 0 {
			return
		}
	}
}

// took notes a read of n datagrams. The loop is behind (s.behind, and FlagBusy on the
// replies) when this read filled every slot of s.in and so did the read before it, with
// no read between them finding the socket empty: the earlier full batch left more
// queued, and this one may have too. One full read alone says nothing, and neither does
// a read of one slot, which is always full: a single light client never sees BUSY.
func (s *Server) took(n int) {
	full := n == len(s.in) && len(s.in) > 1
	s.behind = full && s.lastFull
	s.lastFull = full
}

// armDeadline keeps the read returning every tick while time alone can change the state
// (locks to expire, sessions to time out, isolation runs to collect, the lock-delay to
// end) or a GET /locks scan goes on, and lets it block for good when the machine is idle.
func (s *Server) armDeadline() {
	if s.m.Idle() && s.scan == nil && !s.inDelay {
		if !s.deadline.IsZero() {
			s.deadline = time.Time{}
			s.conn.SetReadDeadline(s.deadline)
		}
		return
	}
	now := time.Now()
	if s.deadline.IsZero() || now.After(s.deadline.Add(-tick/2)) {
		s.deadline = now.Add(tick)
		s.conn.SetReadDeadline(s.deadline)
	}
}

// process turns the n datagrams in s.in into commands, applies them in one Apply and
// encodes the replies into s.out.
func (s *Server) process(n int, now int64) {
	s.cmds = s.cmds[:0]
	s.results = s.results[:0]
	s.beginBatch(now)
	if s.rep != nil {
		s.beginCluster()
	}
	s.debug = s.log.Enabled(context.Background(), slog.LevelDebug)
	s.stats.datagrams.Add(uint64(n))
	for i := 0; i < n; i++ {
		before := len(s.cmds)
		s.parse(i)
		s.batch.frames(len(s.cmds) - before)
	}
	switch {
	case s.rep != nil:
		s.processCluster()
	case s.cfg.Redirect != nil:
		s.redirect()
	default:
		s.collectIsolations()
		s.reserveBatch(len(s.cmds) + s.manyFences)
		s.results, s.isos = s.m.Apply(now, s.cmds, s.results, s.isos[:0])
		s.stats.grants.Store(s.m.Grants())
		s.stats.isolations.Store(s.m.Isolations())
		for _, iso := range s.isos {
			s.startIsolation(iso)
		}
		s.maybeReturnMemory(now)
	}
	if s.rep == nil || !s.cl.leading {
		s.noteMachine(now)
		s.foldResults() // a leader's are folded as its entries are applied
	}
	s.publish()
	s.encode(s.behind)
}
