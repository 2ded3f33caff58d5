// The follower: a server configured with Redirect answers without touching its machine.

package server

import (
	"github.com/netmutex/netmutex/internal/wire"
)

// redirect answers a follower's batch. Only CONNECT, which arrives padded to 512
// bytes, gets REDIRECT: a REDIRECT to a small frame would be larger than its request.
// Everything else gets ERROR NOT_LEADER (PING its PONG), no larger than its request:
// the client keeps its session and sends the request again, with the same id, to
// another server of the cluster.
func (s *Server) redirect() {
	for _, c := range s.cmds {
		r := result{Op: wire.OpError, Code: wire.CodeNotLeader, Tag: c.Tag, Session: c.Session, ID: c.ID}
		switch c.kind {
		case kindConnect:
			r.Op = wire.OpRedirect
		case kindPing:
			r.Op = wire.OpPong
		case kindIsolationDone:
			continue
		}
		s.results = append(s.results, r)
	}
}
