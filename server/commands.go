// Commands: the loop's receive stage, from datagrams to the Commands of one Apply. Every
// datagram is authenticated (opened, with keys), checked whole (wire.Parse) and bound to
// its session's far end before any of its frames becomes a command.

package server

import (
	"net/netip"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// route is where the replies to one datagram of a batch go, and how they are sealed:
// under the key that opened the datagram, or plain (nil) without keys.
type route struct {
	addr netip.AddrPort
	key  *seal.Key
}

// parse authenticates datagram i of s.in, checks it whole, then turns its frames into
// commands. Its route is copied into s.routes, and each command's Tag is its index there:
// the replies are addressed from s.routes, never from s.in, which the next read reuses.
func (s *Server) parse(i int) {
	msg := &s.in[i]
	if msg.N > wire.MaxDatagram {
		s.stats.dropBad(badMalformed)
		return
	}
	raw := msg.Buf[:msg.N]
	plain := raw
	var key *seal.Key
	var nonce seal.Nonce
	if s.keys != nil {
		if !seal.IsSealed(raw) {
			s.refusePlain(msg.Addr, raw)
			return
		}
		var err error
		plain, key, nonce, err = s.keys.Open(s.plainBuf(i), raw)
		if err != nil {
			s.refuseSealed(msg.Addr, raw, err)
			return
		}
	} else if seal.IsSealed(raw) {
		_, _, _, err := noKeys.Open(nil, raw) // only to tell a short or torn one from the rest
		s.refuseSealed(msg.Addr, raw, err)
		return
	}
	d, err := wire.Parse(plain, false)
	if err != nil {
		s.stats.dropBad(badMalformed)
		return
	}
	before := len(s.cmds)
	tag := int32(-1) // the datagram's route, added with its first command
	admin := false
	var f wire.Frame
	for d.Next(&f) {
		if f.Op == wire.OpPad {
			continue
		}
		if f.Op == wire.OpConnect {
			// Parse admits a CONNECT only alone in its datagram (PAD aside).
			s.connect(msg.Addr, key, nonce, &d.Header, &f, plain)
			return
		}
		if tag < 0 {
			var ok bool
			if admin, ok = s.bind(d.Session, msg.Addr, key, nonce); !ok {
				return
			}
			tag = int32(len(s.routes))
			s.routes = append(s.routes, route{msg.Addr, key})
			s.noteRequests(msg.Addr, key, nonce, admin, d.Session, tag, plain)
		}
		c := command{Tag: tag, Session: d.Session, Floor: d.Floor, ID: f.ID}
		if !requestCommand(&c, &f, admin) {
			continue // Parse admits only the request opcodes
		}
		switch c.kind {
		case kindLockMany:
			s.manyFences += f.KeyCount - 1 // a fence per key
		case kindUnlockAll:
			s.logUnlockAll(&c, msg.Addr, key)
		}
		s.cmds = append(s.cmds, c)
	}
	s.stats.requests.Add(uint64(len(s.cmds) - before))
}

// requestCommand fills c's kind and arguments from request frame f; false for an
// opcode that is not a request of a session. admin: the sender may send UNLOCKALL.
func requestCommand(c *command, f *wire.Frame, admin bool) bool {
	switch f.Op {
	case wire.OpPing:
		c.kind = kindPing
	case wire.OpTouch:
		c.kind = kindTouch
	case wire.OpDisconnect:
		c.kind = kindDisconnect
	case wire.OpLock:
		c.kind, c.TTLMs, c.Key = kindLock, f.TTLMs, f.Key
		c.Wait, c.WaitMs = f.Flags&wire.LockWait != 0, f.WaitMs
	case wire.OpLockMany:
		c.kind, c.TTLMs, c.Key, c.KeyCount = kindLockMany, f.TTLMs, f.Keys, uint8(f.KeyCount)
		c.Wait, c.WaitMs = f.Flags&wire.LockWait != 0, f.WaitMs
	case wire.OpUpdate:
		c.kind, c.LockID, c.TTLMs, c.Key = kindUpdate, f.LockID, f.TTLMs, f.Key
	case wire.OpUnlock:
		c.kind, c.LockID, c.Key = kindUnlock, f.LockID, f.Key
	case wire.OpUnlockAll:
		c.kind, c.Admin = kindUnlockAll, admin
	default:
		return false
	}
	return true
}

// noKeys is an empty keyring: it opens nothing, and tells why.
var noKeys = &seal.Keyring{}

// plainBuf is the scratch buffer datagram i of s.in opens into. It lives until the next
// read, as long as the commands that alias it.
func (s *Server) plainBuf(i int) []byte {
	for len(s.plain) <= i {
		s.plain = append(s.plain, make([]byte, 0, wire.MaxDatagram))
	}
	return s.plain[i][:0]
}

// bind checks a datagram of requests against the far end of the session it names: with
// keys, the key and nonce prefix of the session's CONNECT, and a counter not seen before;
// without, the address of the CONNECT. A datagram that fails is dropped whole. One that
// names no live session goes on: the machine answers DISCONNECTED, no larger than the
// request. admin tells whether the session may send UNLOCKALL.
func (s *Server) bind(session uint64, from netip.AddrPort, key *seal.Key, nonce seal.Nonce) (admin, ok bool) {
	if session == 0 {
		return false, true
	}
	p := s.m.peerInfo(session)
	if p == nil {
		return false, true
	}
	if key != nil {
		if key.ID != p.KeyID || nonce.Prefix != p.Prefix {
			s.stats.dropBad(badPeer)
			s.stats.badPeer.Add(1)
			return false, false
		}
		if !p.Window.Accept(nonce.Counter) {
			s.stats.dropBad(badReplay)
			s.stats.replays.Add(1)
			return false, false
		}
		// A fresh sealed datagram of the session from a new address: the client moved
		// (a new leader reached through another path, a NAT rebinding). Grants pushed to
		// its waiters go where it is now.
		if p.Addr != from {
			p.Addr = from
		}
	} else if from != p.Addr {
		s.stats.dropBad(badPeer)
		s.stats.badPeer.Add(1)
		return false, false
	}
	return p.Admin, true
}

// connect takes a CONNECT: one without a valid cookie draws COOKIE (the address has not
// shown that it receives: the server spends no memory on it and sends no more than it
// got), one over its address's rate draws RATE_LIMITED, and the rest go to the machine
// with a fresh session id and the Peer the session will be bound to. A follower keeps no
// state and answers a CONNECT with a REDIRECT smaller than it: it skips both checks.
func (s *Server) connect(from netip.AddrPort, key *seal.Key, nonce seal.Nonce, h *wire.Header, f *wire.Frame, connectPlain []byte) {
	if !s.following() {
		if !s.cookies.valid(f.Cookie, from, f.ID, s.clock) {
			c := s.cookies.make(from, f.ID, s.clock/cookieSlot)
			s.early(from, key, h.Session, wire.OpCookie, f.ID, 0, c[:])
			s.stats.cookies.Add(1)
			return
		}
		if !s.connects.allow(from.Addr(), s.clock) {
			s.early(from, key, h.Session, wire.OpError, f.ID, wire.CodeRateLimited, nil)
			s.stats.rateLimited.Add(1)
			return
		}
	}
	p := &peerInfo{Addr: from}
	if key != nil {
		p.KeyID, p.Admin, p.Prefix = key.ID, key.Admin, nonce.Prefix
		p.Window.Accept(nonce.Counter)
	} else {
		p.Admin = from.Addr().Unmap().IsLoopback()
	}
	tag := int32(len(s.routes))
	s.routes = append(s.routes, route{from, key})
	newSession := s.newSessionID()
	s.noteDatagram(from, key, nonce, p.Admin, newSession, true, connectPlain)
	s.cmds = append(s.cmds, command{
		kind: kindConnect, NewSession: newSession, peerInfo: p, Admin: p.Admin,
		Tag: tag, Session: h.Session, Floor: h.Floor, ID: f.ID, Info: f.Info,
	})
	s.stats.requests.Add(1)
}

// newSessionID draws a random session id, never 0 and never one already live.
func (s *Server) newSessionID() uint64 {
	for {
		if id := s.ids.next(); s.m.peerInfo(id) == nil {
			return id
		}
	}
}

// refusePlain takes a plain datagram sent to a server with keys: a valid CONNECT is
// answered with a plain ERROR AUTH naming its nonce (the client learns why no session
// comes); anything else is dropped.
func (s *Server) refusePlain(from netip.AddrPort, raw []byte) {
	s.stats.badAuth.Add(1)
	d, err := wire.Parse(raw, false)
	if err == nil {
		var f wire.Frame
		for d.Next(&f) {
			if f.Op == wire.OpConnect {
				s.refuseAuth(from, f.ID)
				return
			}
		}
	}
	s.stats.dropBad(badAuth)
}

// refuseSealed takes a sealed datagram that did not open (err): under a key this server
// does not have, forged, or sent to a server without keys. One of CONNECT's size (512
// bytes or more) that is whole is answered with a plain ERROR AUTH with id 0; the rest
// are dropped.
func (s *Server) refuseSealed(from netip.AddrPort, raw []byte, err error) {
	s.stats.badAuth.Add(1)
	if len(raw) >= wire.MinConnectDatagram && (err == seal.ErrUnknownKey || err == seal.ErrForged) {
		s.refuseAuth(from, 0)
		return
	}
	s.stats.dropBad(badAuth)
}

// refuseAuth answers a datagram that did not authenticate with a plain ERROR AUTH (40
// bytes, answering at least 512), at most at the CONNECT rate per address. These
// addresses are not validated, so they have a rate table of their own: a flood of them
// from forged sources cannot fill the table of validated CONNECTs.
func (s *Server) refuseAuth(from netip.AddrPort, id uint64) {
	if !s.authReplies.allow(from.Addr(), s.clock) {
		s.stats.dropBad(badAuthLimited)
		s.stats.rateLimited.Add(1)
		return
	}
	s.early(from, nil, 0, wire.OpError, id, wire.CodeAuth, nil)
	s.stats.authRefused.Add(1)
}

// logUnlockAll logs an UNLOCKALL with who asked: it is an operator's act.
func (s *Server) logUnlockAll(c *command, from netip.AddrPort, key *seal.Key) {
	var keyID uint8
	if key != nil {
		keyID = key.ID
	}
	s.log.Info("UNLOCKALL requested", "session", c.Session, "addr", from.String(),
		"key", keyID, "admin", c.Admin, "id", c.ID)
}
