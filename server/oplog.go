// The loop's logs of what the machine did in a batch: the lock-delay's end, isolations
// without a command, and, at debug level only, sessions opened and ended.

package server

import (
	"fmt"

	"github.com/netmutex/netmutex/internal/wire"
)

// noteMachine logs what the batch changed in the machine that an operator must see. Its
// checks are a few comparisons; it formats nothing unless there is something to log.
func (s *Server) noteMachine(now int64) {
	if s.inDelay && now >= s.delayUntil {
		s.inDelay = false
		s.log.Info("lock-delay over: locks are granted", "lasted", s.store.delay)
	}
	if n := s.m.Isolations(); n != s.isoSeen {
		if s.cfg.IsolateCmd == "" {
			s.log.Warn("sessions isolated: a lock's TTL ran out while its session lived; no isolation command, their locks are released",
				"count", n-s.isoSeen)
		}
		s.isoSeen = n
	}
	if s.debug {
		if ended := s.m.SessionsEnded(); ended != s.metrics.sessionsEnded.Load() {
			s.log.Debug("sessions ended", "count", ended-s.metrics.sessionsEnded.Load(), "sessions", s.m.Sessions())
		}
	}
}

// logSession logs, at debug level (the caller checked s.debug), a session opened by
// CONNECT or closed by DISCONNECT: c is the command, r its reply.
func (s *Server) logSession(c *command, r *result) {
	switch {
	case c.kind == kindConnect && r.Op == wire.OpConnected:
		s.log.Debug("session connected", "session", fmt.Sprintf("%016x", r.Session),
			"addr", s.routes[r.Tag].addr.String(), "info_len", len(c.Info))
	case c.kind == kindDisconnect && r.Op == wire.OpDisconnected:
		s.log.Debug("session disconnected", "session", fmt.Sprintf("%016x", c.Session))
	}
}
