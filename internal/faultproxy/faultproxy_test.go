package faultproxy

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	require.NoError(t, err)
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
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.Addr()))
	require.NoError(t, err)
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
		_, err := c.Write(b)
		require.NoError(t, err)
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
	var want, got []int
	for i := 0; i < 100; i++ {
		want = append(want, i)
	}
	for _, b := range readAll(c) {
		got = append(got, seqOf(b))
	}
	assert.Equal(t, want, got, "echoed datagrams: all 100, in the order sent (no faults)")
	st := p.Stats()
	assert.Equal(t, uint64(100), st.ToServer.Forwarded, "stats %v", st)
	assert.Equal(t, uint64(100), st.ToClient.Forwarded, "stats %v", st)
	assert.Equal(t, 1, st.Flows, "stats %v", st)
}

func TestDropEachDirection(t *testing.T) {
	up := newSink(t, true)
	p := startProxy(t, up, Config{ToServer: Faults{Drop: 1}})
	c := dial(t, p)
	sendSeq(t, c, 50)
	require.Empty(t, readAll(c), "drop=1 to server: the client got datagrams back")
	require.Empty(t, up.received(), "drop=1 to server: the server got datagrams")
	require.Equal(t, uint64(50), p.Stats().ToServer.Dropped, "dropped to server")
	p.SetFaults(ToServer, Faults{})
	p.SetFaults(ToClient, Faults{Drop: 1})
	sendSeq(t, c, 50)
	waitFor(t, "server to receive 50", func() bool { return len(up.received()) == 50 })
	assert.Empty(t, readAll(c), "drop=1 to client: the client got datagrams")
	assert.Equal(t, uint64(50), p.Stats().ToClient.Dropped, "dropped to client")
}

func TestBlackholeOneDirection(t *testing.T) {
	up := newSink(t, true)
	p := startProxy(t, up, Config{})
	p.Blackhole(ToClient, true)
	c := dial(t, p)
	sendSeq(t, c, 20)
	waitFor(t, "server to receive 20", func() bool { return len(up.received()) == 20 })
	require.Empty(t, readAll(c), "the blackholed direction delivered datagrams")
	p.Blackhole(ToClient, false)
	sendSeq(t, c, 20)
	assert.Len(t, readAll(c), 20, "after the blackhole lifted")
	assert.Equal(t, uint64(20), p.Stats().ToClient.Blackholed, "blackholed")
}

func TestDuplicateAndCorrupt(t *testing.T) {
	up := newSink(t, false)
	p := startProxy(t, up, Config{ToServer: Faults{Duplicate: 1, Corrupt: 1, MaxDelay: time.Millisecond, Delay: 0}})
	c := dial(t, p)
	sendSeq(t, c, 40)
	waitFor(t, "80 datagrams", func() bool { return len(up.received()) == 80 })
	zero := make([]byte, 28)
	for _, b := range up.received() {
		require.Len(t, b, 32, "corruption changed the length")
		if seqOf(b) < 40 {
			require.NotEqual(t, zero, b[4:], "datagram %x not corrupted", b)
		}
	}
	// The proxy counts a datagram forwarded after its send returns, which may be after
	// the sink has read it.
	waitFor(t, "80 forwarded", func() bool { return p.Stats().ToServer.Forwarded >= 80 })
	st := p.Stats()
	assert.Equal(t, uint64(40), st.ToServer.Duplicated, "stats %v", st)
	assert.Equal(t, uint64(40), st.ToServer.Corrupted, "stats %v", st)
	assert.Equal(t, uint64(80), st.ToServer.Forwarded, "stats %v", st)
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
		require.Len(t, seen, 200, "%+v: distinct datagrams", f)
		require.NotZero(t, inversions, "%+v: no datagram overtook another", f)
		st := p.Stats().ToServer
		require.NotZero(t, st.Reordered+st.Delayed, "%+v: nothing counted: %+v", f, st)
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
	require.NotEmpty(t, a, "drop=0.5 delivered nothing")
	require.NotEqual(t, 200, len(a), "drop=0.5 delivered everything")
	// The sets hold only true values, so equal maps are equal sets.
	assert.Equal(t, a, b, "the same seed dropped different datagrams")
	assert.NotEqual(t, a, other, "different seeds dropped the same datagrams")
}

func TestSeedFromEnv(t *testing.T) {
	t.Setenv(SeedEnv, "12345")
	up := newSink(t, false)
	p, err := New(Config{Upstream: up.conn.LocalAddr().String()})
	require.NoError(t, err)
	defer p.Close()
	assert.Equal(t, uint64(12345), p.Seed(), "seed from %s", SeedEnv)
}

func TestDistinctSourcePerClient(t *testing.T) {
	up := newSink(t, false)
	p := startProxy(t, up, Config{})
	for i := 0; i < 3; i++ {
		sendSeq(t, dial(t, p), 1)
	}
	waitFor(t, "3 datagrams", func() bool { return len(up.received()) == 3 })
	assert.Equal(t, 3, up.sources(), "sources the server saw for 3 clients")
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
	require.NoError(t, p.Close())
	assert.Error(t, p.Close(), "second Close succeeded")
	l, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	require.NoError(t, err, "listen port still bound after Close")
	l.Close()
}

func TestUpstreamDownAndBack(t *testing.T) {
	up := newSink(t, true)
	upAddr := up.conn.LocalAddr().(*net.UDPAddr)
	p := startProxy(t, up, Config{})
	c := dial(t, p)
	sendSeq(t, c, 5)
	require.Len(t, readAll(c), 5, "echoed before the upstream went down")
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
	assert.Len(t, readAll(c), 5, "echoed after the upstream came back")
}
