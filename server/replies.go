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

// replyKey names the reply datagrams of one batch that go to one address for one session.
type replyKey struct {
	addr    netip.AddrPort
	session uint64
}

// builder is the reply datagram being filled for one replyKey.
type builder struct {
	replyKey
	msg int // index in Server.out
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
// from (s.addrs[Tag]), and busy sets FlagBusy on all of them.
//
// Finding the builder of a result is O(1): the one of the previous result (replies to
// one datagram come in a row), else builderFor.
func (s *Server) encode(busy bool) {
	s.out = s.out[:0]
	s.builders = s.builders[:0]
	if len(s.byKey) > 0 {
		clear(s.byKey)
	}
	var flags uint8
	if busy {
		flags = wire.FlagBusy
	}
	last := -1
	for i := range s.results {
		r := &s.results[i]
		k := replyKey{s.addrs[r.Tag], r.Session}
		bi := last
		if bi < 0 || s.builders[bi].replyKey != k {
			bi = s.builderFor(k, flags)
		}
		last = bi
		b := &s.builders[bi]
		m := &s.out[b.msg]
		if len(m.Buf)+s.replySize(r)+wire.TrailerSize > wire.MaxDatagram {
			m.Buf = wire.FinishDatagram(m.Buf)
			b.msg = s.newDatagram(k, flags)
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
