// The follower: a server configured with Redirect answers without touching its machine.

package server

import (
	"github.com/netmutex/netmutex/internal/wire"
)

// redirect answers a follower's batch. Only CONNECT, which arrives padded to 512
// bytes, gets REDIRECT: a REDIRECT to a small frame would be larger than its request.
// Everything else gets DISCONNECTED (PING its PONG), and the client, connecting again,
// is redirected then.
func (s *Server) redirect() {
	for _, c := range s.cmds {
		r := Result{Op: wire.OpDisconnected, Tag: c.Tag, Session: c.Session, ID: c.ID}
		switch c.Kind {
		case KindConnect:
			r.Op = wire.OpRedirect
		case KindPing:
			r.Op = wire.OpPong
		case KindIsolationDone:
			continue
		}
		s.results = append(s.results, r)
	}
}
