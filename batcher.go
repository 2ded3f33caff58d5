// Stage: the send loop. It drains the ring, gives each request its id and in-flight
// slot, packs frames into datagrams of at most wire.MaxDatagram bytes and datagrams into
// batches, and writes a batch with one system call (sendmmsg on Linux).
package netmutex

import (
	"errors"
	"math"
	"runtime"
	"syscall"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

const (
	// busyPause is how long the sender lets a batch grow after the server said BUSY:
	// fewer, fuller datagrams are what a server that is behind needs.
	busyPause = 200 * time.Microsecond
	// gatherYields bounds how often the sender yields while requests keep arriving: four
	// yields let every caller woken by one batch of replies push again, and bound the
	// delay a steady stream can add to the first of them.
	gatherYields = 4
)

// sendLoop is the only goroutine that assigns request ids, claims in-flight slots,
// retransmits and writes to the socket.
func (c *serverConn) sendLoop() {
	defer c.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	armedAt := nanotime() + int64(time.Hour) // when timer rings
	for !c.closing.Load() {
		now := nanotime()
		if c.rescan.Load() && c.rescan.Swap(false) {
			c.nextDue = math.MinInt64 // scan as soon as scanInterval allows
		}
		session := c.session.Load()
		c.noteHeard(now)
		c.steer(now, session)
		hold := c.holding(now) // a pause between rounds of servers that are not the leader
		took := false
		for len(c.list) < cap(c.list) {
			r := c.ring.pop()
			if r == nil {
				break
			}
			took = true
			r.attemptEnd = now + r.timeout
			c.list = append(c.list, r)
			if session != 0 && !hold {
				c.send(r, now, session)
			}
			c.expect(r, now)
		}
		if now-c.lastScan >= scanInterval {
			c.scan(now, session)
		}
		c.resendDue(now, session)
		if !hold {
			c.sendCleanups(session)
		}
		if session != 0 {
			c.connSent = 0
		}
		if session == 0 && c.redirect.Load() != nil {
			c.redirectParked()
		} else if session == 0 && !c.isolated.Load() && !c.leaving.Load() {
			c.maybeConnect(now)
		} else if session != 0 && !hold && c.touchDue(now) {
			c.touch(now, session)
		}
		sent := c.pk.flush()
		if sent {
			c.lastSend = now
		}
		if c.busy.Load() && sent {
			time.Sleep(busyPause)
			c.busy.Store(false)
		}
		if took || sent || c.ring.ready() {
			// Let the batch form: callers woken by the last replies are runnable now
			// and about to push. Yielding lets them run first; with nothing else to
			// run it returns at once, so a lone request still leaves without delay.
			c.gather()
			continue
		}
		// Ready, not pending: a producer stopped between claiming its slot and filling it
		// (its thread descheduled) wakes us once it has filled it; spinning on it would
		// keep this processor from stealing the callers queued behind that thread.
		c.sleeping.Store(true)
		if c.ring.ready() || c.closing.Load() {
			c.sleeping.Store(false)
			continue
		}
		// A timer already set to ring no later than needed is kept: waking early only
		// costs a round, while resetting it costs every sleep its trip through the
		// runtime's timer heap (a connection with a request out sleeps once a request).
		if until := now + int64(c.idleWait(now)); armedAt <= now || armedAt > until {
			timer.Reset(time.Duration(until - now))
			armedAt = until
		}
		select {
		case <-c.wake:
		case <-timer.C:
			armedAt = 0
		}
		c.sleeping.Store(false)
		c.stats.senderWakes.Add(1)
		c.gather() // as above: whoever woke us may have company
	}
	c.shutdown()
}

// gather yields the processor while callers keep pushing, so that the next datagram
// carries what they pushed. No timer is involved: when nobody else is runnable, Gosched
// returns at once.
func (c *serverConn) gather() {
	for i := 0; i < gatherYields; i++ {
		before := c.ring.head.Load()
		runtime.Gosched()
		if c.ring.head.Load() == before {
			return
		}
	}
}

// takeID hands out the next request id; only the sender calls it.
func (c *serverConn) takeID() uint64 {
	id := c.nextID
	c.nextID++
	return id
}

// send puts r's frame in the batch as an attempt, giving it an id and a slot on its
// first.
func (c *serverConn) send(r *request, now int64, session uint64) {
	if r.id == 0 {
		id := c.takeID()
		for !c.table.claim(id, r) {
			id = c.takeID() // a slow request still holds this slot: skip the id
		}
		// Written before the id is published: whoever completes r by that id reads them.
		r.id, r.session, r.firstSent = id, session, now
		if !r.state.CompareAndSwap(stateQueued, id) {
			c.table.release(id, r) // cancelled before it left
			r.id = 0
			return
		}
	} else {
		c.stats.retransmits.Add(1)
	}
	r.sent++
	r.attemptEnd = now + r.timeout
	c.pack(r, now, session)
}

// pack puts a copy of r's frame, with its id, in the batch.
func (c *serverConn) pack(r *request, now int64, session uint64) {
	r.lastSent, r.gen = now, c.mv.gen
	b := c.pk.reserve(session, c.floor, len(r.frame.B))
	start := len(*b)
	*b = append(*b, r.frame.B...)
	wire.PutFrameID((*b)[start:], r.id)
}

// batchWriter is the half of the socket the packer needs.
type batchWriter interface {
	WriteBatch(ms []batchio.Message) (int, error)
}

// packer packs frames into datagrams and datagrams into a batch for one WriteBatch. It
// is a plain value owned by the send loop, testable without a socket: the batch is
// out[:len], and the datagram being filled, if any, is bufs[len(out)].
type packer struct {
	w         batchWriter
	stats     *connStats
	unbatched bool // one frame per datagram per system call: the benchmarks' baseline

	// With keys, every finished datagram is sealed into sealed[i] and that is what
	// leaves; the plain datagram must then leave room for the seal's overhead.
	keys     *seal.Keyring
	sealer   *seal.Sealer
	sealed   [][]byte
	maxPlain int

	out     []batchio.Message
	bufs    [][]byte
	open    bool   // bufs[len(out)] holds a datagram being filled
	session uint64 // the open datagram's session
	frames  uint64 // frames packed since the last write, published per system call
	wrote   bool   // a write happened since the last flush
	refused bool   // a write met ECONNREFUSED: nothing listens at the server's address
}

func (p *packer) init(w batchWriter, stats *connStats, unbatched bool, keys *seal.Keyring) {
	p.w, p.stats, p.unbatched = w, stats, unbatched
	p.out = make([]batchio.Message, 0, batchio.MaxBatch)
	p.bufs = make([][]byte, batchio.MaxBatch)
	for i := range p.bufs {
		p.bufs[i] = make([]byte, 0, wire.MaxDatagram)
	}
	p.maxPlain = wire.MaxDatagram
	if keys != nil {
		p.keys, p.sealer = keys, seal.NewSealer()
		p.maxPlain = wire.MaxDatagram - seal.Overhead
		p.sealed = make([][]byte, batchio.MaxBatch)
		for i := range p.sealed {
			p.sealed[i] = make([]byte, 0, wire.MaxDatagram)
		}
	}
}

// leave adds the finished plain datagram at bufs[len(out)] to the batch, sealed when
// there are keys.
func (p *packer) leave() {
	i := len(p.out)
	d := p.bufs[i]
	if p.keys != nil {
		p.sealed[i] = p.sealer.Seal(p.sealed[i][:0], p.keys.Sealing(), d)
		d = p.sealed[i]
	}
	p.out = append(p.out, batchio.Message{Buf: d})
}

// reserve returns the datagram buffer to append a frame of n bytes to, for session,
// opening a new datagram (whose header carries floor), or writing out a full batch,
// as needed.
func (p *packer) reserve(session, floor uint64, n int) *[]byte {
	if p.open && (p.unbatched || len(p.bufs[len(p.out)])+n+wire.TrailerSize > p.maxPlain || session != p.session) {
		p.closeDatagram()
	}
	if !p.open {
		if len(p.out) == cap(p.out) {
			p.write()
		}
		p.session = session
		p.open = true
		p.bufs[len(p.out)] = wire.BeginDatagram(p.bufs[len(p.out)][:0], wire.Header{Session: session, Floor: floor})
	}
	p.frames++
	return &p.bufs[len(p.out)]
}

// ownDatagram returns an empty buffer for a datagram the caller builds and finishes
// itself, then hands to addDatagram.
func (p *packer) ownDatagram() []byte {
	p.closeDatagram()
	if len(p.out) == cap(p.out) {
		p.write()
	}
	return p.bufs[len(p.out)][:0]
}

// addDatagram adds a finished datagram built in the buffer ownDatagram returned.
func (p *packer) addDatagram(d []byte, frames int) {
	p.bufs[len(p.out)] = d
	p.leave()
	p.frames += uint64(frames)
	if len(p.out) == cap(p.out) || p.unbatched {
		p.write()
	}
}

func (p *packer) closeDatagram() {
	if !p.open {
		return
	}
	p.open = false
	i := len(p.out)
	p.bufs[i] = wire.FinishDatagram(p.bufs[i])
	p.leave()
	if len(p.out) == cap(p.out) || p.unbatched {
		p.write()
	}
}

// flush writes out what the batch holds and reports whether anything left since the
// last flush, including batches written early because they were full.
func (p *packer) flush() bool {
	p.closeDatagram()
	p.write()
	wrote := p.wrote
	p.wrote = false
	return wrote
}

func (p *packer) write() {
	if len(p.out) == 0 {
		return
	}
	// A failed send loses these datagrams like any other loss: the retransmission scan
	// covers them. ECONNREFUSED says more: the server went away, and the send loop
	// moves to another (retarget.go).
	n, err := p.w.WriteBatch(p.out)
	if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
		p.refused = true
	}
	p.stats.sendCalls.Add(1)
	p.stats.datagramsOut.Add(uint64(n))
	p.stats.framesOut.Add(p.frames)
	p.frames = 0
	p.out = p.out[:0]
	p.wrote = true
}
