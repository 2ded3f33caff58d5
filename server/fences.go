// Fences: the machine's fence counter and the durable limit below which it may hand
// fences out, and the loop's reservation of fence blocks ahead of that limit.

package server

import (
	"errors"
	"time"
)

// fenceBlock is how many fences one durable write reserves. One fsync (a millisecond or
// so) per 65,536 grants costs nothing even at hundreds of thousands of grants a second,
// and a crash wastes at most that many of 2^64 tokens.
const fenceBlock = 1 << 16

// FencesLeft is how many fences can be handed out before SetFenceLimit must be called
// again. The loop makes sure it is at least what the commands of a batch may take (one
// per LOCK, one per key of a LOCKMANY) before Apply. Grants handed on to waiters take
// what is left; when none is, they wait for the next reservation (the machine stalls
// them, see waiters.go), never for a fence that is not durable.
func (m *machine) FencesLeft() uint64 { return m.fenceEnd - m.fence }

// NextFence is the fence the next grant gets.
func (m *machine) NextFence() uint64 { return m.fence }

// SetFenceLimit allows fences below end to be handed out. The caller has made end
// durable first. It never lowers the limit.
func (m *machine) SetFenceLimit(end uint64) {
	if end > m.fenceEnd {
		m.fenceEnd = end
	}
}

// reserveRetry is how often a failing reservation (a full disk, an I/O error) is tried
// again: ten durable writes a second at most, however many batches arrive, and grants
// resume within a tenth of a second of space returning.
const reserveRetry = 100 * time.Millisecond

// reservation is the outcome of a durable write of a new fence high-water mark.
type reservation struct {
	end uint64
	err error
}

// reserveBatch reserves fences for a batch before Apply: need is what its commands may
// take (one per command, one per key of a LOCKMANY). When no durable fence is left (the state file cannot be written: a full
// disk), the machine refuses grants with LOCK_DELAY rather than use a fence that is not
// durable, while UPDATE, UNLOCK and the rest are served as usual; the write is tried
// again every reserveRetry, and grants resume once it succeeds. The failure is logged
// once when it starts and once when it ends (noteReservation), not per batch.
func (s *Server) reserveBatch(need int) {
	_ = s.reserve(need) // noteReservation logged a failure; the machine refuses grants
}

// reserve makes sure the machine can hand out at least need fences. When the current
// block runs low, the next one is written in the background: an fsync costs
// milliseconds, which every waiting client would otherwise see in its latency. Only
// when the block is used up before that write is durable does the loop wait for it.
func (s *Server) reserve(need int) error {
	s.collectReservation(false)
	block := s.store.block
	left := s.m.FencesLeft()
	if left >= uint64(need) && left > 0 {
		if left < block/2 && !s.reserving && s.mayReserve() {
			end := s.m.NextFence() + left + block
			s.store.settle()
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
	if !s.mayReserve() {
		return errReserveLater
	}
	end := s.m.NextFence() + block + uint64(need)
	s.store.settle()
	err := s.store.reserve(end)
	s.noteReservation(err)
	if err != nil {
		// The machine refuses grants (LOCK_DELAY) rather than use an unpersisted fence.
		return err
	}
	s.m.SetFenceLimit(end)
	return nil
}

// errReserveLater: the last reservation failed less than reserveRetry ago.
var errReserveLater = errors.New("server: fence reservation failed; not retried yet")

// mayReserve tells whether a reservation may be written now: always while writes
// succeed, every reserveRetry while they fail.
func (s *Server) mayReserve() bool {
	return !s.store.failing || !time.Now().Before(s.store.retryAt)
}

// noteReservation records the outcome of a reservation write: a failure is logged when
// failures start (not again until a write has succeeded), a success after failures once.
func (s *Server) noteReservation(err error) {
	st := s.store
	s.reserveOK = err == nil
	switch {
	case err != nil:
		st.retryAt = time.Now().Add(reserveRetry)
		if !st.failing {
			st.failing = true
			s.log.Error("cannot reserve fences: the state file cannot be written; "+
				"LOCK is refused (LOCK_DELAY) once the fences already reserved run out, "+
				"retrying every "+reserveRetry.String(),
				"err", err, "fences_left", s.m.FencesLeft())
		}
	case st.failing:
		st.failing = false
		s.log.Warn("fence reservation works again: granting", "first_fence", s.m.NextFence())
	}
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
	s.noteReservation(r.err)
	if r.err == nil {
		s.m.SetFenceLimit(r.end)
	}
}

// raiseFence makes the next fence at least floor: a new cluster leader's floor, so
// fences rise even past a log that was lost. Fences below the current one are never
// handed out again.
func (m *machine) raiseFence(floor uint64) {
	if floor > m.fence {
		m.fence = floor
	}
	if m.fence > m.fenceEnd {
		m.fenceEnd = m.fence
	}
}
