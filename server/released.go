// The released-id list: per session, the LOCK ids already answered for good (granted
// and released, or refused), so that a late copy of a request gets the same answer and
// never a late grant. Part of the Machine.

package server

// maxReleased bounds the released-lock-id list of one session, so that a client whose
// ack floor is held back (a request retransmitted for seconds while thousands of others
// complete) cannot grow server memory without bound. Past it the oldest quarter is
// forgotten, without moving the floor: the pending request that holds the floor back
// must still be served. A copy of a forgotten LOCK arriving later still would be granted
// to a client that no longer waits for it; the lock then expires and isolates that
// client — a loss of liveness, never of mutual exclusion — and only after 2^18 releases
// by one session during one copy's flight.
const maxReleased = 1 << 18

// The top bits of an entry of a session's released list say how its LOCK was answered
// for good: granted and released (no bit), refused with LOCKED, or refused with
// LOCK_DELAY. A copy gets the same answer again. Request ids never reach bit 62.
const (
	answeredLocked = 1 << 63
	answeredDelay  = 1 << 62
	answerBits     = answeredLocked | answeredDelay
)

// The released list is kept sorted by id. Ids arrive nearly in order, so an insertion
// is almost always an append, a lookup is a binary search, and pruning below the floor
// cuts a prefix.

// releasedIndex returns the position of the first entry whose id is >= id.
func (s *session) releasedIndex(id uint64) int {
	lo, hi := 0, len(s.released)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s.released[mid]&^answerBits < id {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// hasReleased reports whether id is a LOCK already answered for good, and how (its
// answer bits).
func (s *session) hasReleased(id uint64) (done bool, how uint64) {
	i := s.releasedIndex(id)
	if i < len(s.released) && s.released[i]&^answerBits == id {
		return true, s.released[i] & answerBits
	}
	return false, 0
}

// addReleased records entry (an id and its answer bits), keeping the list sorted.
func (s *session) addReleased(entry uint64) {
	id := entry &^ answerBits
	if len(s.released) >= maxReleased {
		n := copy(s.released, s.released[maxReleased/4:])
		s.released = s.released[:n]
	}
	n := len(s.released)
	if n == 0 || s.released[n-1]&^answerBits < id {
		s.released = append(s.released, entry)
		return
	}
	i := s.releasedIndex(id)
	if i < n && s.released[i]&^answerBits == id {
		return
	}
	s.released = append(s.released, 0)
	copy(s.released[i+1:], s.released[i:n])
	s.released[i] = entry
}

// pruneReleased drops the ids below the floor: such requests are dropped anyway.
func (s *session) pruneReleased() {
	i := s.releasedIndex(s.floor)
	if i == 0 {
		return
	}
	n := copy(s.released, s.released[i:])
	s.released = s.released[:n]
}
