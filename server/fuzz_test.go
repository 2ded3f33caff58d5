package server

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/netmutex/netmutex/internal/wire"
)

// Fuzzing the whole receive path. The seam is the one server.go itself uses between its
// socket and its state machine: a datagram is written into the receive buffers s.in (as
// recvmmsg would), then s.process parses it (the size check, wire.Parse, the frames into
// commands), applies the commands to the Machine and encodes the replies into s.out,
// exactly as the loop does after each ReadBatch. Only the two syscalls are left out, so
// the fuzzer runs at memory speed and deterministically.
//
// Properties: no panic; a datagram counted as bad draws no reply and changes no state
// (sessions, their floors and last-seen times, locks, fences); a valid one draws replies
// within the bounds of docs/PROTOCOL.md (no reply larger than the datagram that drew
// it, no reply datagram over MaxDatagram).

type recvHarness struct {
	s        *Server
	from     netip.AddrPort
	now      int64
	sessions []uint64
}

func newRecvHarness(tb testing.TB) *recvHarness {
	cfg := DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = tb.TempDir()
	cfg.Logger = quiet
	s, err := newServer(cfg) // no loop goroutine: the harness is the loop
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		s.collectReservation(true) // what the loop does when it ends
		close(s.loopDone)          // and then this; stop waits for it
		s.Close()
	})
	h := &recvHarness{s: s, from: netip.MustParseAddrPort("127.0.0.1:9")}
	// Two sessions, one holding a lock, so that valid frames find something to act on.
	for nonce := uint64(1); nonce <= 2; nonce++ {
		h.feed(connectDatagram(0, nonce, "fuzz", h.cookie(nonce)))
		if len(s.results) != 1 || s.results[0].Op != wire.OpConnected {
			tb.Fatalf("connect: %+v", s.results)
		}
		h.sessions = append(h.sessions, s.results[0].Session)
	}
	b := wire.BeginDatagram(nil, wire.Header{Session: h.sessions[0]})
	b = wire.AppendLock(b, 1, 60000, "held")
	h.feed(wire.FinishDatagram(b))
	if len(s.results) != 1 || s.results[0].Op != wire.OpOK {
		tb.Fatalf("lock: %+v", s.results)
	}
	return h
}

// cookie is the valid cookie of a CONNECT with nonce from the harness's address.
func (h *recvHarness) cookie(nonce uint64) []byte {
	c := h.s.cookies.make(h.from, nonce, h.now/cookieSlot)
	return c[:]
}

// feed runs one datagram through the receive path at the harness's time.
func (h *recvHarness) feed(d []byte) {
	m := &h.s.in[0]
	m.N = copy(m.Buf, d)
	if len(d) > len(m.Buf) {
		m.N = len(m.Buf) // the kernel truncates to the buffer, which is one byte too long for any valid datagram
	}
	m.Addr = h.from
	h.s.process(1, h.now)
}

// digest describes every piece of machine state a datagram could change.
func (h *recvHarness) digest() string {
	m := h.s.m
	var lines []string
	for id, s := range m.sessions {
		lines = append(lines, fmt.Sprintf("s %x seen=%d floor=%d iso=%v/%v released=%v locks=%d",
			id, s.lastSeen, s.floor, s.isolated, s.isolating, s.released, s.nlocks))
	}
	for k, e := range m.locks {
		if e.sess != nil {
			lines = append(lines, fmt.Sprintf("l %q %x %d %d %d", k, e.sess.id, e.lockID, e.fence, e.deadline))
		}
	}
	sort.Strings(lines)
	for k := range m.locks {
		if q := m.Queue(k); len(q) > 0 {
			lines = append(lines, fmt.Sprintf("q %q %v", k, q))
		}
	}
	lines = append(lines, fmt.Sprintf("fence=%d end=%d grants=%d isolations=%d", m.fence, m.fenceEnd, m.grants, m.isolations))
	return strings.Join(lines, "\n")
}

// check feeds d and checks the properties.
func (h *recvHarness) check(t *testing.T, d []byte) {
	h.now += 1e6
	h.s.process(0, h.now) // let time act first (expiry), so only d can change the state
	before := h.digest()
	bad := h.s.stats.bad.Load()
	h.feed(d)
	if h.s.stats.bad.Load() != bad {
		if len(h.s.results) != 0 || len(h.s.out) != 0 {
			t.Fatalf("a bad datagram drew %d replies in %d datagrams", len(h.s.results), len(h.s.out))
		}
		if after := h.digest(); after != before {
			t.Fatalf("a bad datagram changed the state:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		return
	}
	n := min(len(d), len(h.s.in[0].Buf))
	total, connected, pushed := 0, false, 0
	for _, r := range h.s.results {
		connected = connected || r.Op == wire.OpConnected
		if r.Tag < 0 {
			// A grant pushed to a waiter: it answers that waiter's LOCK (and goes to the
			// address its session's cookie validated), not this datagram.
			pushed++
		}
	}
	total -= pushed * (wire.FrameHeaderSize + 8 + wire.HeaderSize + wire.TrailerSize)
	for _, o := range h.s.out {
		if len(o.Buf) > wire.MaxDatagram {
			t.Fatalf("reply datagram of %d bytes", len(o.Buf))
		}
		if o.Addr != h.from {
			t.Fatalf("reply sent to %v, not to the sender", o.Addr)
		}
		total += len(o.Buf)
	}
	if connected && total > n {
		t.Fatalf("CONNECTED reply of %d bytes to a %d-byte request", total, n)
	}
	if limit := n + (wire.HeaderSize+wire.TrailerSize)*max(len(h.s.out)-1, 0); total > limit {
		t.Fatalf("%d bytes of replies to a %d-byte datagram of %d requests (bound %d)", total, n, len(h.s.cmds), limit)
	}
}

// sealed rewrites the length field and the checksum of d to match, so that mutations
// reach the frame parser behind the CRC check.
func sealed(d []byte) []byte {
	if len(d) < wire.HeaderSize+wire.TrailerSize {
		return d
	}
	return wire.FinishDatagram(slices.Clone(d[:len(d)-wire.TrailerSize]))
}

// recvSeeds are valid datagrams of every request and a few broken ones.
func recvSeeds(h *recvHarness) [][]byte {
	s0, s1 := h.sessions[0], h.sessions[1]
	one := func(session, floor uint64, add func([]byte) []byte) []byte {
		b := wire.BeginDatagram(nil, wire.Header{Session: session, Floor: floor})
		return wire.FinishDatagram(add(b))
	}
	seeds := [][]byte{
		connectDatagram(0, 77, "host", nil),
		connectDatagram(0, 78, "host", h.cookie(78)),
		connectDatagram(0, 79, "host", make([]byte, wire.CookieSize)),
		one(0, 0, func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpPing, 1) }),
		one(s0, 0, func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpTouch, 5) }),
		one(s1, 0, func(b []byte) []byte { return wire.AppendLock(b, 3, 1000, "k") }),
		one(s1, 0, func(b []byte) []byte { return wire.AppendLock(b, 4, 1000, "held") }),
		one(s0, 0, func(b []byte) []byte { return wire.AppendUpdate(b, 6, 1, 2000, "held") }),
		one(s1, 2, func(b []byte) []byte { return wire.AppendUnlock(b, 7, 3, "k") }),
		one(s1, 0, func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpUnlockAll, 8) }),
		one(s1, 0, func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpDisconnect, 9) }),
		one(s1, 0, func(b []byte) []byte { return wire.AppendLockWait(b, 10, 1000, 50, "held") }),
		one(s1, 0, func(b []byte) []byte { return wire.AppendLockMany(b, 11, 1000, true, 0, []string{"held", "k"}) }),
		one(s1, 0, func(b []byte) []byte { return wire.AppendLockMany(b, 12, 1000, false, 0, []string{"m", "n"}) }),
		one(s0, 0, func(b []byte) []byte { return wire.AppendUnlock(b, 13, 1, "held") }),
		one(s0, 0, func(b []byte) []byte {
			for i := uint64(0); i < 20; i++ {
				b = wire.AppendLock(b, 100+i, 500, fmt.Sprintf("key-%d", i))
				b = wire.AppendUnlock(b, 200+i, 100+i, fmt.Sprintf("key-%d", i))
			}
			return b
		}),
		{},
		{1, 0, 0, 36},
	}
	corrupt := slices.Clone(seeds[3])
	corrupt[len(corrupt)-1] ^= 1
	return append(seeds, corrupt)
}

func FuzzServerReceive(f *testing.F) {
	h := newRecvHarness(f)
	for _, s := range recvSeeds(h) {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, d []byte, seal bool) {
		if seal {
			d = sealed(d)
		}
		h.check(t, d)
	})
}

// TestServerReceiveMutations is the bounded run in the normal tests: every seed with
// each of its bytes changed, truncated and extended.
func TestServerReceiveMutations(t *testing.T) {
	h := newRecvHarness(t)
	for _, seed := range recvSeeds(h) {
		h.check(t, seed)
		for i := range seed {
			for _, x := range []byte{0x01, 0x80, 0xff} {
				d := slices.Clone(seed)
				d[i] ^= x
				h.check(t, d)
				h.check(t, sealed(d))
			}
			h.check(t, seed[:i])
			h.check(t, sealed(seed[:i]))
		}
		h.check(t, append(slices.Clone(seed), 0))
	}
	if h.s.stats.bad.Load() == 0 {
		t.Fatal("no datagram was found bad: the check of bad datagrams was never exercised")
	}
}

// TestServerTouchAmplification: a datagram never draws a reply larger than itself.
// TOUCH (12 bytes) was once answered with OK carrying an 8-byte fence (20 bytes), so a
// datagram of TOUCH frames for a valid session — session ids are predictable: boot
// count << 32 | a counter — drew a reply two thirds larger, to whatever source address
// it claimed. TOUCH is now answered with an empty PONG.
func TestServerTouchAmplification(t *testing.T) {
	h := newRecvHarness(t)
	b := wire.BeginDatagram(nil, wire.Header{Session: h.sessions[1]})
	for i := uint64(0); i < 100; i++ {
		b = wire.AppendEmpty(b, wire.OpTouch, 10+i)
	}
	d := wire.FinishDatagram(b)
	h.feed(d)
	total := 0
	for _, o := range h.s.out {
		total += len(o.Buf)
	}
	if total > len(d) {
		t.Fatalf("a %d-byte datagram of TOUCH frames drew %d bytes of replies", len(d), total)
	}
}
