// Replies: the loop's send stage, from the Results of one Apply to reply datagrams on
// the socket.

package server

import (
	"errors"
	"net"
	"net/netip"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/wire"
)

// builder is the reply datagram being filled for one (address, session).
type builder struct {
	addr    netip.AddrPort
	session uint64
	msg     int // index in Server.out
}

// replySize is the size of the frame that encodes r.
func (s *Server) replySize(r *Result) int {
	switch r.Op {
	case wire.OpConnected:
		return wire.ConnectedSize(s.connected.Servers)
	case wire.OpOK:
		return wire.FrameHeaderSize + 8
	case wire.OpError:
		return wire.FrameHeaderSize + 4
	case wire.OpRedirect:
		return wire.FrameHeaderSize + 3 + len(s.cfg.Redirect.Addr)
	}
	return wire.FrameHeaderSize
}

func (s *Server) appendReply(b []byte, r *Result) []byte {
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
		return wire.AppendRedirect(b, r.ID, s.cfg.Redirect.ID, s.cfg.Redirect.Addr)
	}
	return wire.AppendEmpty(b, r.Op, r.ID)
}

// encode packs s.results into reply datagrams in s.out: all replies for one (address,
// session) of the batch share datagrams, each reply goes to the address its request came
// from, and busy sets FlagBusy on all of them.
func (s *Server) encode(busy bool) {
	s.out = s.out[:0]
	s.builders = s.builders[:0]
	var flags uint8
	if busy {
		flags = wire.FlagBusy
	}
	last := -1
	for i := range s.results {
		r := &s.results[i]
		addr := s.in[r.Tag].Addr
		bi := -1
		if last >= 0 && s.builders[last].addr == addr && s.builders[last].session == r.Session {
			bi = last
		} else {
			for j := range s.builders {
				if s.builders[j].addr == addr && s.builders[j].session == r.Session {
					bi = j
					break
				}
			}
		}
		if bi < 0 {
			s.builders = append(s.builders, builder{addr: addr, session: r.Session, msg: s.newDatagram(addr, r.Session, flags)})
			bi = len(s.builders) - 1
		}
		last = bi
		b := &s.builders[bi]
		m := &s.out[b.msg]
		if len(m.Buf)+s.replySize(r)+wire.TrailerSize > wire.MaxDatagram {
			m.Buf = wire.FinishDatagram(m.Buf)
			b.msg = s.newDatagram(addr, r.Session, flags)
			m = &s.out[b.msg]
		}
		m.Buf = s.appendReply(m.Buf, r)
	}
	for _, b := range s.builders {
		m := &s.out[b.msg]
		m.Buf = wire.FinishDatagram(m.Buf)
	}
	s.stats.replies.Add(uint64(len(s.results)))
}

// newDatagram starts a reply datagram in a reused buffer and returns its index in s.out.
func (s *Server) newDatagram(addr netip.AddrPort, session uint64, flags uint8) int {
	i := len(s.out)
	if i == len(s.outBufs) {
		s.outBufs = append(s.outBufs, make([]byte, 0, wire.MaxDatagram))
	}
	buf := wire.BeginDatagram(s.outBufs[i][:0], wire.Header{Flags: flags, Session: session})
	s.out = append(s.out, batchio.Message{Buf: buf, Addr: addr})
	return i
}

// send writes s.out, skipping a datagram the kernel refuses rather than stalling the loop.
func (s *Server) send() {
	for sent := 0; sent < len(s.out); {
		n, err := s.bc.WriteBatch(s.out[sent:])
		s.stats.syscallsOut.Add(1)
		s.stats.datagramsOut.Add(uint64(n))
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
