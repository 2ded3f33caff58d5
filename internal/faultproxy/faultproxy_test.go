package faultproxy

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// sink is an upstream that records what it receives and, when echo is set, sends each
// datagram back to its source.
type sink struct {
	conn *net.UDPConn
	echo bool
	mu   sync.Mutex
	got  [][]byte
	from map[netip.AddrPort]int
	done chan struct{}
}

func newSink(t *testing.T, echo bool) *sink {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{conn: c, echo: echo, from: map[netip.AddrPort]int{}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, append([]byte(nil), buf[:n]...))
			s.from[from]++
			s.mu.Unlock()
			if echo {
				c.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-s.done })
	return s
}

func (s *sink) received() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.got...)
}

func (s *sink) sources() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.from)
}

func startProxy(t *testing.T, up *sink, cfg Config) *Proxy {
	t.Helper()
	cfg.Upstream = up.conn.LocalAddr().String()
	if cfg.Seed == 0 {
		cfg.Seed = 42
	}
	cfg.Logf = t.Logf
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendSeq sends n 32-byte datagrams numbered 0..n-1, pacing them so that the kernel
// buffers never overflow (a loss the test must not blame on the proxy).
func sendSeq(t *testing.T, c *net.UDPConn, n int) {
	t.Helper()
	b := make([]byte, 32)
	for i := 0; i < n; i++ {
		binary.BigEndian.PutUint32(b, uint32(i))
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if i%16 == 15 {
			time.Sleep(200 * time.Microsecond)
		}
	}
}

func seqOf(b []byte) int { return int(binary.BigEndian.Uint32(b)) }

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// readAll reads what comes back on c until quiet for 100ms.
func readAll(c *net.UDPConn) [][]byte {
	var out [][]byte
	buf := make([]byte, 2048)
	for {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			return out
		}
		out = append(out, append([]byte(nil), buf[:n]...))
	}
}

func TestCleanPassThroughBothWays(t *testing.T) {
	up := newSink(t, true)
	p := startProxy(t, up, Config{})
	c := dial(t, p)
	sendSeq(t, c, 100)
	back := readAll(c)
	if len(back) != 100 {
		t.Fatalf("echoed %d datagrams, want 100", len(back))
	}
	for i, b := range back {
		if seqOf(b) != i {
			t.Fatalf("datagram %d came back as %d: reordered without faults", i, seqOf(b))
		}
	}
	st := p.Stats()
	if st.ToServer.Forwarded != 100 || st.ToClient.Forwarded != 100 || st.Flows != 1 {
		t.Fatalf("stats %v", st)
	}
}

func TestDropEachDirection(t *testing.T) {
	up := newSink(t, true)
	p := startProxy(t, up, Config{ToServer: Faults{Drop: 1}})
	c := dial(t, p)
	sendSeq(t, c, 50)
	if back := readAll(c); len(back) != 0 || len(up.received()) != 0 {
		t.Fatalf("drop=1 to server: server got %d, client %d", len(up.received()), len(back))
	}
	if st := p.Stats(); st.ToServer.Dropped != 50 {
		t.Fatalf("dropped %d, want 50", st.ToServer.Dropped)
	}
	p.SetFaults(ToServer, Faults{})
	p.SetFaults(ToClient, Faults{Drop: 1})
	sendSeq(t, c, 50)
	waitFor(t, "server to receive 50", func() bool { return len(up.received()) == 50 })
	if back := readAll(c); len(back) != 0 {
		t.Fatalf("drop=1 to client: client got %d", len(back))
	}
	if st := p.Stats(); st.ToClient.Dropped != 50 {
		t.Fatalf("dropped to client %d, want 50", st.ToClient.Dropped)
	}
}

func TestBlackholeOneDirection(t *testing.T) {
	up := newSink(t, true)
	p := startProxy(t, up, Config{})
	p.Blackhole(ToClient, true)
	c := dial(t, p)
	sendSeq(t, c, 20)
	waitFor(t, "server to receive 20", func() bool { return len(up.received()) == 20 })
	if back := readAll(c); len(back) != 0 {
		t.Fatalf("blackholed direction delivered %d", len(back))
	}
	p.Blackhole(ToClient, false)
	sendSeq(t, c, 20)
	if back := readAll(c); len(back) != 20 {
		t.Fatalf("after the blackhole lifted: %d back, want 20", len(back))
	}
	if st := p.Stats(); st.ToClient.Blackholed != 20 {
		t.Fatalf("blackholed %d, want 20", st.ToClient.Blackholed)
	}
}

func TestDuplicateAndCorrupt(t *testing.T) {
	up := newSink(t, false)
	p := startProxy(t, up, Config{ToServer: Faults{Duplicate: 1, Corrupt: 1, MaxDelay: time.Millisecond, Delay: 0}})
	c := dial(t, p)
	sendSeq(t, c, 40)
	waitFor(t, "80 datagrams", func() bool { return len(up.received()) == 80 })
	zero := make([]byte, 28)
	for _, b := range up.received() {
		if len(b) != 32 {
			t.Fatalf("corruption changed the length: %d", len(b))
		}
		if seqOf(b) < 40 && bytes.Equal(b[4:], zero) {
			t.Fatalf("datagram %x not corrupted", b)
		}
	}
	st := p.Stats()
	if st.ToServer.Duplicated != 40 || st.ToServer.Corrupted != 40 || st.ToServer.Forwarded != 80 {
		t.Fatalf("stats %v", st)
	}
}

func TestReorderAndDelay(t *testing.T) {
	for _, f := range []Faults{
		{Reorder: 0.5},
		{Delay: 0.5, MaxDelay: 5 * time.Millisecond},
	} {
		up := newSink(t, false)
		p := startProxy(t, up, Config{ToServer: f})
		c := dial(t, p)
		sendSeq(t, c, 200)
		waitFor(t, "200 datagrams", func() bool { return len(up.received()) == 200 })
		inversions := 0
		seen := map[int]bool{}
		got := up.received()
		for i, b := range got {
			seen[seqOf(b)] = true
			if i > 0 && seqOf(b) < seqOf(got[i-1]) {
				inversions++
			}
		}
		if len(seen) != 200 {
			t.Fatalf("%+v: %d distinct datagrams, want 200", f, len(seen))
		}
		if inversions == 0 {
			t.Fatalf("%+v: no datagram overtook another", f)
		}
		st := p.Stats().ToServer
		if st.Reordered+st.Delayed == 0 {
			t.Fatalf("%+v: nothing counted: %+v", f, st)
		}
		p.Close()
	}
}

// TestSeedReplays checks that a seed fixes which datagrams of a flow suffer.
func TestSeedReplays(t *testing.T) {
	run := func(seed uint64) map[int]bool {
		up := newSink(t, false)
		p := startProxy(t, up, Config{Seed: seed, ToServer: Faults{Drop: 0.5}})
		c := dial(t, p)
		sendSeq(t, c, 200)
		waitFor(t, "the survivors", func() bool {
			return uint64(len(up.received())) == 200-p.Stats().ToServer.Dropped
		})
		got := map[int]bool{}
		for _, b := range up.received() {
			got[seqOf(b)] = true
		}
		p.Close()
		return got
	}
	a, b, other := run(7), run(7), run(8)
	if len(a) == 0 || len(a) == 200 {
		t.Fatalf("drop=0.5 delivered %d of 200", len(a))
	}
	same := func(x, y map[int]bool) bool {
		if len(x) != len(y) {
			return false
		}
		for k := range x {
			if !y[k] {
				return false
			}
		}
		return true
	}
	if !same(a, b) {
		t.Fatal("the same seed dropped different datagrams")
	}
	if same(a, other) {
		t.Fatal("different seeds dropped the same datagrams")
	}
}

func TestSeedFromEnv(t *testing.T) {
	t.Setenv(SeedEnv, "12345")
	up := newSink(t, false)
	p, err := New(Config{Upstream: up.conn.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Seed() != 12345 {
		t.Fatalf("seed %d, want 12345 from %s", p.Seed(), SeedEnv)
	}
}

func TestDistinctSourcePerClient(t *testing.T) {
	up := newSink(t, false)
	p := startProxy(t, up, Config{})
	for i := 0; i < 3; i++ {
		sendSeq(t, dial(t, p), 1)
	}
	waitFor(t, "3 datagrams", func() bool { return len(up.received()) == 3 })
	if n := up.sources(); n != 3 {
		t.Fatalf("server saw %d sources for 3 clients", n)
	}
}

// TestCloseReleasesEverything checks that Close closes the sockets (the ports can be
// bound again) and, through TestMain's goleak, that no goroutine is left, even with
// datagrams still held back.
func TestCloseReleasesEverything(t *testing.T) {
	up := newSink(t, false)
	p := startProxy(t, up, Config{ToServer: Faults{Delay: 1, MaxDelay: time.Hour}})
	c := dial(t, p)
	sendSeq(t, c, 10)
	waitFor(t, "10 delayed", func() bool { return p.Stats().ToServer.Delayed == 10 })
	addr := p.Addr()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err == nil {
		t.Fatal("second Close succeeded")
	}
	l, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatalf("listen port still bound after Close: %v", err)
	}
	l.Close()
}

func TestUpstreamDownAndBack(t *testing.T) {
	up := newSink(t, true)
	upAddr := up.conn.LocalAddr().(*net.UDPAddr)
	p := startProxy(t, up, Config{})
	c := dial(t, p)
	sendSeq(t, c, 5)
	if back := readAll(c); len(back) != 5 {
		t.Fatalf("%d back", len(back))
	}
	up.conn.Close()
	<-up.done
	sendSeq(t, c, 5) // refused upstream: the proxy must survive it
	time.Sleep(20 * time.Millisecond)
	up2c, err := net.ListenUDP("udp", upAddr)
	if err != nil {
		t.Skipf("cannot rebind %v: %v", upAddr, err)
	}
	defer up2c.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := up2c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			up2c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	sendSeq(t, c, 5)
	if back := readAll(c); len(back) != 5 {
		t.Fatalf("after the upstream came back: %d back, want 5", len(back))
	}
}
