// Fences: the machine's fence counter and the durable limit below which it may hand
// fences out, and the loop's reservation of fence blocks ahead of that limit.

package server

// fenceBlock is how many fences one durable write reserves. One fsync (a millisecond or
// so) per 65,536 grants costs nothing even at hundreds of thousands of grants a second,
// and a crash wastes at most that many of 2^64 tokens.
const fenceBlock = 1 << 16

// FencesLeft is how many fences can be handed out before SetFenceLimit must be called
// again. The loop makes sure it is at least the number of commands of a batch (each
// command grants at most one fence) before Apply.
func (m *Machine) FencesLeft() uint64 { return m.fenceEnd - m.fence }

// NextFence is the fence the next grant gets.
func (m *Machine) NextFence() uint64 { return m.fence }

// SetFenceLimit allows fences below end to be handed out. The caller has made end
// durable first. It never lowers the limit.
func (m *Machine) SetFenceLimit(end uint64) {
	if end > m.fenceEnd {
		m.fenceEnd = end
	}
}

// reservation is the outcome of a durable write of a new fence high-water mark.
type reservation struct {
	end uint64
	err error
}

// reserveBatch reserves fences for a batch of need commands before Apply (each grants
// at most one). On failure the machine refuses grants (LOCK_DELAY) rather than use a
// fence that is not durable. A failure is logged when failures start, and then on every
// batch only while no fence at all is left.
func (s *Server) reserveBatch(need int) {
	if err := s.reserve(need); err != nil {
		if s.reserveOK || s.m.FencesLeft() == 0 {
			s.log.Error("cannot reserve fences; refusing grants", "err", err)
		}
		s.reserveOK = false
		return
	}
	s.reserveOK = true
}

// reserve makes sure the machine can hand out at least need fences. When the current
// block runs low, the next one is written in the background: an fsync costs
// milliseconds, which every waiting client would otherwise see in its latency. Only
// when the block is used up before that write is durable does the loop wait for it.
func (s *Server) reserve(need int) error {
	s.collectReservation(false)
	left := s.m.FencesLeft()
	if left >= uint64(need) && left > 0 {
		if left < fenceBlock/2 && !s.reserving {
			end := s.m.NextFence() + left + fenceBlock
			s.reserving = true
			go func() {
				err := s.store.reserve(end)
				s.reserved <- reservation{end, err}
			}()
		}
		return nil
	}
	if s.reserving {
		s.collectReservation(true)
		if left = s.m.FencesLeft(); left >= uint64(need) && left > 0 {
			return nil
		}
	}
	end := s.m.NextFence() + fenceBlock + uint64(need)
	if err := s.store.reserve(end); err != nil {
		// The machine refuses grants (LOCK_DELAY) rather than use an unpersisted fence.
		return err
	}
	s.m.SetFenceLimit(end)
	return nil
}

// collectReservation takes the outcome of a background reservation, if one is done
// (or, with wait, once it is), and lets the machine use the fences it made durable.
func (s *Server) collectReservation(wait bool) {
	if !s.reserving {
		return
	}
	var r reservation
	if wait {
		r = <-s.reserved
	} else {
		select {
		case r = <-s.reserved:
		default:
			return
		}
	}
	s.reserving = false
	if r.err != nil {
		s.log.Error("cannot reserve fences ahead", "err", r.err)
		return
	}
	s.m.SetFenceLimit(r.end)
}
