package server

import (
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/wire"
)

// requireStops closes s and fails unless Close returns within a generous bound.
func requireStops(t *testing.T, s *Server) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not stop the loop within 5s")
	}
}

// TestServerSpinWaitServes: with SpinWait the server serves as without, whether the
// next request comes while the loop still polls or after it has gone to sleep, and
// Close stops it (goleak checks that nothing is left running).
func TestServerSpinWaitServes(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.SpinWait = time.Millisecond
	cfg.HTTPAddr = "127.0.0.1:0"
	s := startServer(t, cfg)
	closed := false
	defer func() {
		if !closed {
			s.Close()
		}
	}()
	a, b := newClient(t, s.Addr()), newClient(t, s.Addr())
	a.connect("a")
	b.connect("b")
	pauses := []time.Duration{0, 200 * time.Microsecond, 5 * time.Millisecond} // within the spin, and after
	for i := range 30 {
		time.Sleep(pauses[i%len(pauses)])
		id, f := a.lock("k", time.Minute)
		requireOp(t, f, wire.OpOK, "LOCK")
		require.NotZero(t, f.Fence, "LOCK: %+v", f)
		requireOp(t, b.lockFrame("k", time.Minute), wire.OpLocked, "LOCK of a held key")
		time.Sleep(pauses[(i+1)%len(pauses)])
		requireOp(t, a.unlock("k", id), wire.OpOK, "UNLOCK")
	}
	// Two requests in one datagram: the loop's spin under load and SpinWait together.
	id := a.id()
	a.send(a.datagram(func(d []byte) []byte {
		d = wire.AppendLock(d, id, 1000, "k2")
		return wire.AppendUnlock(d, a.id(), id, "k2")
	}))
	_, fr, ok := a.recv(2 * time.Second)
	require.True(t, ok, "no reply to LOCK+UNLOCK")
	require.Len(t, fr, 2)
	requireOp(t, fr[0], wire.OpOK, "LOCK")
	requireOp(t, fr[1], wire.OpOK, "UNLOCK")
	// The loop answers the HTTP server's questions too.
	code, body := httpGet(t, s, "/locks")
	require.Equal(t, http.StatusOK, code, body)
	// Close right after a request, while the loop is likely still polling.
	requireOp(t, b.touch(), wire.OpPong, "TOUCH")
	closed = true
	requireStops(t, s)
}

// TestServerSpinWaitBadConfig: New refuses a negative SpinWait or one above MaxSpinWait
// with ErrBadSpinWait before it creates or binds anything.
func TestServerSpinWaitBadConfig(t *testing.T) {
	// An address taken here: had New tried to bind it, it would fail with another error.
	held, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer held.Close()
	for _, d := range []time.Duration{-time.Nanosecond, MaxSpinWait + time.Millisecond} {
		dir := filepath.Join(t.TempDir(), "data")
		cfg := testConfig(t, dir)
		cfg.ListenAddr = held.LocalAddr().String()
		cfg.SpinWait = d
		assert.ErrorIs(t, cfg.Validate(), ErrBadSpinWait, "Validate, SpinWait %v", d)
		s, err := New(cfg)
		require.ErrorIs(t, err, ErrBadSpinWait, "New, SpinWait %v", d)
		require.Nil(t, s)
		assert.NoDirExists(t, dir, "SpinWait %v: the data directory was created", d)
	}
	for _, d := range []time.Duration{0, time.Nanosecond, 50 * time.Microsecond, MaxSpinWait} {
		cfg := DefaultConfig()
		cfg.DataDir = "x"
		cfg.SpinWait = d
		assert.NoError(t, cfg.Validate(), "SpinWait %v", d)
	}
	assert.Zero(t, DefaultConfig().SpinWait, "off by default")
}

// tryCounter is a fakeConn that counts the datagrams TryReadBatch took.
type tryCounter struct {
	*fakeConn
	took atomic.Int64
}

func (c *tryCounter) TryReadBatch(ms []batchio.Message) (int, error) {
	n, err := c.fakeConn.TryReadBatch(ms)
	c.took.Add(int64(n))
	return n, err
}

func (c *tryCounter) ReadLoop(ms []batchio.Message, handle func(n int) batchio.ReadAction) error {
	return batchio.LoopOver(c, ms, handle)
}

// TestServerSpinWaitPolls: without SpinWait a lone request is read by a blocking read
// (the loop parks after each); with it, the next request is taken by polling. A SpinWait
// past MaxSpinWait, set behind Validate's back, makes the outcome certain; the loop must
// still stop once the socket closes.
func TestServerSpinWaitPolls(t *testing.T) {
	if !batchio.CanPoll {
		t.Skip("without recvmmsg TryReadBatch reads nothing: SpinWait does not poll")
	}
	for _, c := range []struct {
		name string
		spin time.Duration
		want int64
	}{{"off", 0, 0}, {"on", time.Hour, 20}} {
		t.Run(c.name, func(t *testing.T) {
			var tc *tryCounter
			fs := startFakeServerWith(t, 64, func(s *Server) {
				s.cfg.SpinWait = c.spin
				tc = &tryCounter{fakeConn: s.bc.(*fakeConn)}
				s.bc = tc
			})
			before := tc.took.Load()
			for range 20 {
				fs.c.push(fs.from, fs.touch())
				var f wire.Frame
				r := fs.reply()
				require.True(t, r.Next(&f))
				require.Equal(t, wire.OpPong, f.Op, "TOUCH: %+v", f)
			}
			assert.Equal(t, c.want, tc.took.Load()-before, "datagrams taken by polling")
			fs.c.close()
			select {
			case <-fs.s.loopDone:
			case <-time.After(5 * time.Second):
				t.Fatal("the loop went on polling after the socket closed")
			}
		})
	}
}

// TestServerSpinWaitNotForGarbage: a datagram that carries no request (garbage here;
// refused and forged ones alike) does not start a spin, so a flood of them costs the
// server no SpinWait of polling each; a request does.
func TestServerSpinWaitNotForGarbage(t *testing.T) {
	if !batchio.CanPoll {
		t.Skip("without recvmmsg TryReadBatch reads nothing: SpinWait does not poll")
	}
	var tc *tryCounter
	fs := startFakeServerWith(t, 64, func(s *Server) {
		s.cfg.SpinWait = time.Hour // behind Validate's back: a spin, once begun, never runs out
		tc = &tryCounter{fakeConn: s.bc.(*fakeConn)}
		s.bc = tc
	})
	touch := func() {
		t.Helper()
		fs.c.push(fs.from, fs.touch())
		var f wire.Frame
		r := fs.reply()
		require.True(t, r.Next(&f))
		require.Equal(t, wire.OpPong, f.Op, "TOUCH: %+v", f)
	}
	// The CONNECT that made the session began a spin, which the loop's tick ends.
	time.Sleep(100 * time.Millisecond)
	before := fs.s.stats.badReason[badMalformed].Load()
	for range 5 {
		fs.c.push(fs.from, []byte("not a datagram of ours"))
	}
	require.Eventually(t, func() bool { return fs.s.stats.badReason[badMalformed].Load() == before+5 },
		5*time.Second, time.Millisecond, "the garbage was not read")
	took := tc.took.Load() // a spin begun by the garbage polls now, until the next tick

	touch()
	assert.Equal(t, took, tc.took.Load(), "a request after garbage was taken by polling: the garbage began a spin")
	took = tc.took.Load()
	touch()
	assert.Equal(t, took+1, tc.took.Load(), "the request after a request is taken by the spin it began")
	fs.c.close()
	<-fs.s.loopDone
}

// TestServerSpinWaitEndsOnDeadline: over a real socket, a poll that would never run out
// (SpinWait past MaxSpinWait, set behind Validate's back; no session, so no tick) ends
// when a read deadline passes, so that the HTTP server's questions are answered, and when
// the socket closes.
func TestServerSpinWaitEndsOnDeadline(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.HTTPAddr = "127.0.0.1:0"
	s, err := newServer(cfg)
	require.NoError(t, err)
	s.cfg.SpinWait = time.Hour
	go s.loop()
	s.serveHTTP()
	closed := false
	defer func() {
		if !closed {
			s.Close()
		}
	}()
	c := newClient(t, s.Addr())
	ping := func() {
		t.Helper()
		id := c.id()
		requireOp(t, c.call(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpPing, id) }), wire.OpPong, "PING")
	}
	ping()
	ping() // taken by the poll that the first began
	code, body := httpGet(t, s, "/locks")
	require.Equal(t, http.StatusOK, code, "GET /locks while the loop polls: %s", body)
	ping()
	closed = true
	requireStops(t, s)
}
