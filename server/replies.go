// Replies: the loop's send stage, from the Results of one Apply to reply datagrams on
// the socket.

package server

import (
	"errors"
	"net"
	"net/netip"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// replyKey names the reply datagrams of one batch that go to one address for one
// session, sealed under one key (nil: plain).
type replyKey struct {
	addr    netip.AddrPort
	session uint64
	key     *seal.Key
}

// builder is the reply datagram being filled for one replyKey.
type builder struct {
	replyKey
	msg int // index in Server.out
}

// replySize is the size of the frame that encodes r.
func (s *Server) replySize(r *result) int {
	switch r.Op {
	case wire.OpConnected:
		return wire.ConnectedSize(s.connected.Servers)
	case wire.OpOK:
		return wire.FrameHeaderSize + 8
	case wire.OpError:
		return wire.FrameHeaderSize + 4
	case wire.OpRedirect:
		return wire.FrameHeaderSize + 3 + len(s.redirectTo.Addr)
	}
	return wire.FrameHeaderSize
}

func (s *Server) appendReply(b []byte, r *result) []byte {
	switch r.Op {
	case wire.OpConnected:
		s.connected.Session = r.Session
		return wire.AppendConnected(b, r.ID, &s.connected)
	case wire.OpOK:
		return wire.AppendOK(b, r.ID, r.Fence)
	case wire.OpError:
		// No text: the code says it all, and an empty text keeps every ERROR within 8
		// bytes of its request (no amplification).
		return wire.AppendError(b, r.ID, r.Code, "")
	case wire.OpRedirect:
		return wire.AppendRedirect(b, r.ID, s.redirectTo.ID, s.redirectTo.Addr)
	}
	return wire.AppendEmpty(b, r.Op, r.ID)
}

// encode packs s.results into reply datagrams in s.out, after the early replies of the
// batch: all replies for one (address, session, key) of the batch share datagrams, each
// reply goes to the address its request came from (s.routes[Tag]) sealed under the key
// that opened the request, and busy sets FlagBusy on all of them. A datagram to be
// sealed is filled only up to s.maxPlain, so that sealed it fits MaxDatagram.
//
// Finding the builder of a result is O(1): the one of the previous result (replies to
// one datagram come in a row), else builderFor.
func (s *Server) encode(busy bool) {
	s.out = s.out[:s.nEarly]
	s.builders = s.builders[:0]
	if len(s.byKey) > 0 {
		clear(s.byKey)
	}
	var flags uint8
	if busy {
		flags = wire.FlagBusy
	}
	last, dropped := -1, 0
	for i := range s.results {
		r := &s.results[i]
		var k replyKey
		if r.Tag >= 0 {
			rt := &s.routes[r.Tag]
			k = replyKey{rt.addr, r.Session, rt.key}
		} else if !s.pushRoute(r.Session, &k) {
			dropped++
			continue
		}
		bi := last
		if bi < 0 || s.builders[bi].replyKey != k {
			bi = s.builderFor(k, flags)
		}
		last = bi
		b := &s.builders[bi]
		m := &s.out[b.msg]
		if len(m.Buf)+s.replySize(r)+wire.TrailerSize > s.maxPlain {
			s.finish(b.msg, k.key)
			b.msg = s.newDatagram(k, flags)
			m = &s.out[b.msg]
		}
		m.Buf = s.appendReply(m.Buf, r)
	}
	for _, b := range s.builders {
		s.finish(b.msg, b.key)
	}
	s.stats.replies.Add(uint64(len(s.results) - dropped))
}

// pushRoute sets k to where a pushed result (a grant to a waiter, Tag -1) of session
// goes: the address of the session's CONNECT, which its cookie proved receives, sealed
// under the session's key. It needs no route of the batch: nothing of the batch asked
// for it. false: the session ended in the same Apply, and the push is dropped.
func (s *Server) pushRoute(session uint64, k *replyKey) bool {
	p := s.m.peerInfo(session)
	if p == nil {
		s.stats.pushDropped.Add(1)
		return false
	}
	*k = replyKey{addr: p.Addr, session: session}
	if s.keys != nil {
		if k.key = s.keys.Lookup(p.KeyID); k.key == nil {
			s.stats.pushDropped.Add(1)
			return false
		}
	}
	s.stats.pushed.Add(1)
	return true
}

// scanBuilders is how many builders a batch may have before their keys go into a map.
// Up to 8, comparing keys one after another is cheaper than hashing one
// (BenchmarkServerEncode), so a batch from a few clients never touches the map. Past 8
// a scan would grow with the (address, session) pairs of the batch, and a datagram of
// CONNECT frames makes a new session per frame: the map keeps each lookup O(1).
const scanBuilders = 8

// builderFor returns the index in s.builders of k's builder, starting one if k has
// none. s.byKey indexes the builders once there are more than scanBuilders; it is
// cleared per batch and keeps its buckets, so it allocates nothing once it has grown
// to the batches it sees.
func (s *Server) builderFor(k replyKey, flags uint8) int {
	if len(s.builders) <= scanBuilders {
		for i := range s.builders {
			if s.builders[i].replyKey == k {
				return i
			}
		}
	} else if i, ok := s.byKey[k]; ok {
		return i
	}
	i := len(s.builders)
	s.builders = append(s.builders, builder{k, s.newDatagram(k, flags)})
	switch {
	case i == scanBuilders: // the map takes over: index every builder
		for j := range s.builders {
			s.byKey[s.builders[j].replyKey] = j
		}
	case i > scanBuilders:
		s.byKey[k] = i
	}
	return i
}

// newDatagram starts a reply datagram in a reused buffer and returns its index in s.out.
func (s *Server) newDatagram(k replyKey, flags uint8) int {
	i := len(s.out)
	if i == len(s.outBufs) {
		s.outBufs = append(s.outBufs, make([]byte, 0, wire.MaxDatagram))
	}
	buf := wire.BeginDatagram(s.outBufs[i][:0], wire.Header{Flags: flags, Session: k.session})
	s.out = append(s.out, batchio.Message{Buf: buf, Addr: k.addr})
	return i
}

// finish ends datagram i of s.out: its length and checksum, then, under key, its sealed
// form in a buffer of its own (Seal does not work in place).
func (s *Server) finish(i int, key *seal.Key) {
	m := &s.out[i]
	m.Buf = wire.FinishDatagram(m.Buf)
	if key != nil {
		for len(s.sealBufs) <= i {
			s.sealBufs = append(s.sealBufs, make([]byte, 0, wire.MaxDatagram))
		}
		m.Buf = s.sealer.Seal(s.sealBufs[i][:0], key, m.Buf)
	}
}

// early queues, while the batch is parsed, a reply the receive stage gives by itself
// (COOKIE; ERROR AUTH or RATE_LIMITED to a CONNECT) alone in a small datagram of its
// own (at most 52 bytes, plus 44 sealed), sealed under key unless it is nil. encode
// appends the machine's replies after these.
func (s *Server) early(to netip.AddrPort, key *seal.Key, session uint64, op wire.Op, id uint64, code wire.Code, cookie []byte) {
	i := s.newDatagram(replyKey{to, session, key}, 0)
	m := &s.out[i]
	if op == wire.OpCookie {
		m.Buf = wire.AppendCookie(m.Buf, id, cookie)
	} else {
		m.Buf = wire.AppendError(m.Buf, id, code, "")
	}
	s.finish(i, key)
	s.nEarly++
	s.stats.replies.Add(1)
}

// send writes s.out, skipping a datagram the kernel refuses rather than stalling the loop.
func (s *Server) send() {
	for sent := 0; sent < len(s.out); {
		n, err := s.bc.WriteBatch(s.out[sent:])
		s.stats.syscallsOut.Add(1)
		s.stats.datagramsOut.Add(uint64(n))
		if n > 0 {
			s.metrics.dgmsPerSend.observe(n)
		}
		sent += n
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.stats.sendErrors.Add(1)
			if sent < len(s.out) {
				s.log.Debug("send failed", "to", s.out[sent].Addr.String(), "err", err)
			}
			sent++
		} else if n == 0 {
			return // nothing sent and no error: do not spin
		}
	}
}
