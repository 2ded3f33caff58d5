// Commands: the loop's receive stage, from datagrams to the Commands of one Apply.

package server

import (
	"github.com/netmutex/netmutex/internal/wire"
)

// parse checks datagram i of s.in whole, then turns its frames into commands. The
// sender's address is copied into s.addrs, and each command's Tag is its index there:
// the replies are addressed from s.addrs, never from s.in, which the next read reuses.
func (s *Server) parse(i int) {
	msg := &s.in[i]
	if msg.N > wire.MaxDatagram {
		s.stats.bad.Add(1)
		return
	}
	d, err := wire.Parse(msg.Buf[:msg.N], false)
	if err != nil {
		s.stats.bad.Add(1)
		return
	}
	before := len(s.cmds)
	tag := int32(len(s.addrs))
	s.addrs = append(s.addrs, msg.Addr)
	var f wire.Frame
	for d.Next(&f) {
		c := Command{Tag: tag, Session: d.Session, Floor: d.Floor, ID: f.ID}
		switch f.Op {
		case wire.OpPad:
			continue
		case wire.OpConnect:
			c.Kind, c.Info = KindConnect, f.Info
		case wire.OpPing:
			c.Kind = KindPing
		case wire.OpTouch:
			c.Kind = KindTouch
		case wire.OpDisconnect:
			c.Kind = KindDisconnect
		case wire.OpLock:
			c.Kind, c.TTLMs, c.Key = KindLock, f.TTLMs, f.Key
		case wire.OpUpdate:
			c.Kind, c.LockID, c.TTLMs, c.Key = KindUpdate, f.LockID, f.TTLMs, f.Key
		case wire.OpUnlock:
			c.Kind, c.LockID, c.Key = KindUnlock, f.LockID, f.Key
		case wire.OpUnlockAll:
			c.Kind = KindUnlockAll
		default:
			continue // Parse admits only the request opcodes above
		}
		s.cmds = append(s.cmds, c)
	}
	if len(s.cmds) == before {
		s.addrs = s.addrs[:tag] // only PAD: nothing will be answered
	}
	s.stats.requests.Add(uint64(len(s.cmds) - before))
}
