// The follower: a server configured with Redirect, or a cluster node that does not lead,
// answers without touching its machine.

package server

import (
	"github.com/netmutex/netmutex/internal/wire"
)

// following tells whether this server answers as a follower: configured with Redirect,
// or a cluster node that does not lead (or not yet: its barrier is pending).
func (s *Server) following() bool {
	return s.cfg.Redirect != nil || (s.rep != nil && !s.cl.leading)
}

// redirect answers a follower's batch (docs/PROTOCOL.md, Cluster). CONNECT, which arrives
// padded to 512 bytes, gets REDIRECT to the leader, or ERROR NOT_LEADER while none is
// known (s.redirectTo nil); PING gets PONG. LOCK, LOCKMANY, UPDATE and UNLOCK get ERROR
// NOT_LEADER, no larger than their request: the client keeps its session and sends the
// request again, with the same id, to another server. TOUCH, DISCONNECT and UNLOCKALL get
// nothing: their frames are smaller than an ERROR, and the client's next attempt goes to
// another server anyway.
func (s *Server) redirect() {
	for _, c := range s.cmds {
		r := result{Op: wire.OpError, Code: wire.CodeNotLeader, Tag: c.Tag, Session: c.Session, ID: c.ID}
		switch c.kind {
		case kindConnect:
			if s.redirectTo != nil {
				r.Op, r.Code = wire.OpRedirect, 0
			}
		case kindPing:
			r.Op, r.Code = wire.OpPong, 0
		case kindLock, kindLockMany, kindUpdate, kindUnlock:
		default:
			continue
		}
		s.results = append(s.results, r)
	}
}
