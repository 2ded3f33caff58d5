package server

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// benchHarness drives one server's receive-apply-send path without its loop: each round
// writes a full batch of datagrams into the receive buffers (as recvmmsg would), then
// runs process and send, sending the replies to a sink socket.
type benchHarness struct {
	tb       testing.TB
	s        *Server
	sink     *net.UDPConn
	sessions []uint64 // datagram i of a batch is of sessions[i%len(sessions)]
	keys     [][]string
	nextID   []uint64
	now      int64

	key     *seal.Key      // with keys: every datagram is sealed under it
	sealers []*seal.Sealer // per session
	scratch []byte         // the plain datagram before it is sealed
}

const (
	benchSessions = 4
	benchLocks    = 8 // LOCK then UNLOCK of 8 keys: 16 frames per datagram
)

func newBenchHarness(tb testing.TB) *benchHarness { return newBenchHarnessKeys(tb, nil) }

// newBenchHarnessKeys is newBenchHarness with every datagram sealed under the first key
// of ring, nil: plain.
func newBenchHarnessKeys(tb testing.TB, ring *seal.Keyring) *benchHarness {
	return newBenchHarnessSessions(tb, ring, benchSessions)
}

// newBenchHarnessSessions is newBenchHarnessKeys with the batch's datagrams spread over
// n sessions.
func newBenchHarnessSessions(tb testing.TB, ring *seal.Keyring, n int) *benchHarness {
	cfg := DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = tb.TempDir()
	cfg.Logger = quiet
	cfg.Keys = ring
	s, err := newServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	h := &benchHarness{tb: tb, s: s, sink: sink, scratch: make([]byte, 0, wire.MaxDatagram)}
	if ring != nil {
		h.key = ring.Sealing()
	}
	sinkAddr := sink.LocalAddr().(*net.UDPAddr).AddrPort()
	for i := range s.in {
		s.in[i].Addr = sinkAddr
	}
	// Connect the sessions through the same path, one datagram each: a batch may have
	// one slot only (batchio.MaxBatch is 1 but on Linux).
	for i := 0; i < n; i++ {
		c := s.cookies.make(sinkAddr, uint64(i+1), 0)
		h.sealers = append(h.sealers, seal.NewSealer())
		h.put(0, i, connectDatagram(0, uint64(i+1), "bench", c[:]))
		s.process(1, 0)
		if len(s.results) != 1 || s.results[0].Op != wire.OpConnected {
			tb.Fatalf("connect: %+v", s.results)
		}
		h.sessions = append(h.sessions, s.results[0].Session)
		h.nextID = append(h.nextID, 1)
	}
	// Datagram i of a batch is of session i%n and locks its own keys.
	perSession := (len(s.in) + n - 1) / n
	for i := 0; i < n; i++ {
		var ks []string
		for j := 0; j < perSession*benchLocks; j++ {
			ks = append(ks, "key-"+strconv.Itoa(i)+"-"+strconv.Itoa(j))
		}
		h.keys = append(h.keys, ks)
	}
	return h
}

// put writes the plain datagram d of session sess into receive slot i, sealed with keys.
func (h *benchHarness) put(i, sess int, d []byte) {
	m := &h.s.in[i]
	if h.key == nil {
		m.N = copy(m.Buf, d)
		return
	}
	m.N = len(h.sealers[sess].Seal(m.Buf[:0], h.key, d))
}

func (h *benchHarness) requests() int { return len(h.s.in) * 2 * benchLocks }

// round runs one full batch: every datagram LOCKs benchLocks keys and UNLOCKs them.
func (h *benchHarness) round() {
	s := h.s
	for i := range s.in {
		sess := i % len(h.sessions)
		id := h.nextID[sess]
		b := wire.BeginDatagram(h.scratch[:0], wire.Header{Session: h.sessions[sess], Floor: id})
		keys := h.keys[sess][(i/len(h.sessions))*benchLocks:]
		for j := 0; j < benchLocks; j++ {
			b = wire.AppendLock(b, id+uint64(j), 10000, keys[j])
		}
		for j := 0; j < benchLocks; j++ {
			b = wire.AppendUnlock(b, id+uint64(benchLocks+j), id+uint64(j), keys[j])
		}
		h.nextID[sess] = id + 2*benchLocks
		h.put(i, sess, wire.FinishDatagram(b))
	}
	h.now += int64(time.Microsecond)
	s.process(len(s.in), h.now)
	if len(s.results) != h.requests() || s.results[0].Op != wire.OpOK || s.results[0].Fence == 0 {
		h.tb.Fatalf("%d results, first %+v", len(s.results), s.results[0])
	}
	s.send()
}

func (h *benchHarness) close() {
	h.sink.Close()
	h.s.collectReservation(true) // as the loop does when it ends
	h.s.conn.Close()
	h.s.store.close()
	h.s.isoCancel()
}

// BenchmarkServerApply measures the server's receive-apply-send path for full batches
// (batchio.MaxBatch datagrams of 16 frames): parse, one Apply, encode, one WriteBatch.
func BenchmarkServerApply(b *testing.B) {
	benchServerApply(b, nil)
}

// BenchmarkServerApplySealed is BenchmarkServerApply with keys: every datagram opened,
// bound to its session's key, prefix and replay window, and every reply sealed.
func BenchmarkServerApplySealed(b *testing.B) {
	benchServerApply(b, testRing(b))
}

// BenchmarkServerApplySessions is BenchmarkServerApply with the batch's datagrams from
// 1 session to one session each: a server's cost per request must not grow with the
// number of distinct sessions (clients) in a batch. The nowrite runs hand the replies
// to a writer that drops them: what is left is the server's own work, apart from the
// kernel's, which grows with the reply datagrams (one per session at least).
func BenchmarkServerApplySessions(b *testing.B) {
	for _, n := range []int{1, 8, batchio.MaxBatch} {
		b.Run(strconv.Itoa(n), func(b *testing.B) { benchServerApplyN(b, nil, n) })
		b.Run(strconv.Itoa(n)+"/nowrite", func(b *testing.B) {
			benchServerApplyWith(b, nil, n, func(s *Server) { s.bc = dropWrites{s.bc} })
		})
	}
}

// dropWrites is a socket whose writes succeed without leaving.
type dropWrites struct{ batchio.Conn }

func (dropWrites) WriteBatch(ms []batchio.Message) (int, error) { return len(ms), nil }

func benchServerApply(b *testing.B, ring *seal.Keyring) { benchServerApplyN(b, ring, benchSessions) }

func benchServerApplyN(b *testing.B, ring *seal.Keyring, sessions int) {
	benchServerApplyWith(b, ring, sessions, nil)
}

func benchServerApplyWith(b *testing.B, ring *seal.Keyring, sessions int, tweak func(*Server)) {
	h := newBenchHarnessSessions(b, ring, sessions)
	defer h.close()
	if tweak != nil {
		tweak(h.s)
	}
	h.round()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		h.round()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*h.requests()), "ns/request")
	b.ReportMetric(float64(h.requests())/float64(batchio.MaxBatch), "frames/datagram")
	b.ReportMetric(float64(h.s.stats.datagramsOut.Load())/float64(b.N+1), "replies/batch")
}

// BenchmarkServerRoundTrip measures one LOCK+UNLOCK round trip over real UDP through
// the running loop, one datagram at a time (the unbatched baseline).
func BenchmarkServerRoundTrip(b *testing.B) {
	cfg := DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = b.TempDir()
	cfg.Logger = quiet
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c := newClient(b, s.Addr())
	c.connect("bench")
	c.conn.SetReadDeadline(time.Time{})
	out := make([]byte, 0, wire.MaxDatagram)
	in := make([]byte, 2048)
	id := uint64(1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		d := wire.BeginDatagram(out[:0], wire.Header{Session: c.session, Floor: id})
		d = wire.AppendLock(d, id, 10000, "k")
		d = wire.AppendUnlock(d, id+1, id, "k")
		d = wire.FinishDatagram(d)
		id += 2
		if _, err := c.conn.Write(d); err != nil {
			b.Fatal(err)
		}
		if _, err := c.conn.Read(in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServerEncode measures the encode stage alone (results of a full batch into
// reply datagrams), without the syscalls and the machine that dominate ServerApply.
func BenchmarkServerEncode(b *testing.B) {
	h := newBenchHarness(b)
	defer h.close()
	h.round()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		h.s.encode(false)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*h.requests()), "ns/request")
}
