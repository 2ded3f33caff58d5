// The replay window: each sender counter accepted once.

package seal

// WindowSize is how far behind the newest counter a datagram may arrive and still be
// accepted once: 256 datagrams covers the reordering of a full sendmmsg batch several
// times over, and costs 32 bytes per peer.
const WindowSize = 256

// Window is a sliding replay window over one sender's counters (RFC 6479, as DTLS and
// IPsec keep one): each counter is accepted once, and counters more than WindowSize
// behind the newest are refused. The zero value accepts any first counter above 0.
type Window struct {
	top  uint64 // the newest counter accepted
	bits [WindowSize / 64]uint64
}

// Accept reports whether counter is new, and records it. Call it only after the
// datagram authenticated: a forged counter must not move the window.
func (w *Window) Accept(counter uint64) bool {
	if counter == 0 {
		return false
	}
	if counter > w.top {
		shift := counter - w.top
		if shift >= WindowSize {
			clear(w.bits[:])
		} else {
			for c := w.top + 1; c <= counter; c++ {
				w.clearBit(c)
			}
		}
		w.top = counter
		w.setBit(counter)
		return true
	}
	if w.top-counter >= WindowSize {
		return false
	}
	if w.bit(counter) {
		return false
	}
	w.setBit(counter)
	return true
}

func (w *Window) bit(c uint64) bool { return w.bits[(c/64)%(WindowSize/64)]&(1<<(c%64)) != 0 }
func (w *Window) setBit(c uint64)   { w.bits[(c/64)%(WindowSize/64)] |= 1 << (c % 64) }
func (w *Window) clearBit(c uint64) { w.bits[(c/64)%(WindowSize/64)] &^= 1 << (c % 64) }

// State returns the newest counter accepted and the bitmap of the WindowSize counters up
// to it (counter c at bit c mod WindowSize), for snapshots of the sessions that keep a
// window. Accepting each set counter in increasing order makes the same window again.
func (w *Window) State() (top uint64, bits [WindowSize / 64]uint64) { return w.top, w.bits }
