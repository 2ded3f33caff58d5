package server

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/wire"
)

// fakeConn is a batchio.Conn over an in-memory queue, so that the loop runs without a
// kernel and a test decides exactly what each read finds waiting.
type fakeConn struct {
	mu      sync.Mutex
	queue   []batchio.Message // waiting datagrams; Addr is the sender
	closed  bool
	ready   chan struct{}      // signalled (buffered 1) when the queue grows or closes
	replies chan wire.Datagram // every datagram written, parsed
}

var _ batchio.Conn = (*fakeConn)(nil)

func newFakeConn() *fakeConn {
	return &fakeConn{ready: make(chan struct{}, 1), replies: make(chan wire.Datagram, 4096)}
}

// push queues datagrams from one sender, all at once: the next read finds them all.
func (f *fakeConn) push(from netip.AddrPort, ds ...[]byte) {
	f.mu.Lock()
	for _, d := range ds {
		f.queue = append(f.queue, batchio.Message{Buf: d, Addr: from})
	}
	f.mu.Unlock()
	f.signal()
}

func (f *fakeConn) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.signal()
}

func (f *fakeConn) signal() {
	select {
	case f.ready <- struct{}{}:
	default:
	}
}

// take moves up to len(ms) waiting datagrams into ms, as recvmmsg would.
func (f *fakeConn) take(ms []batchio.Message) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, net.ErrClosed
	}
	n := min(len(ms), len(f.queue))
	for i := range n {
		ms[i].N = copy(ms[i].Buf, f.queue[i].Buf)
		ms[i].Addr = f.queue[i].Addr
	}
	f.queue = f.queue[n:]
	return n, nil
}

func (f *fakeConn) ReadBatch(ms []batchio.Message) (int, error) {
	for {
		if n, err := f.take(ms); n > 0 || err != nil {
			return n, err
		}
		<-f.ready
	}
}

func (f *fakeConn) TryReadBatch(ms []batchio.Message) (int, error) { return f.take(ms) }

func (f *fakeConn) ReadLoop(ms []batchio.Message, handle func(n int) batchio.ReadAction) error {
	return batchio.LoopOver(f, ms, handle)
}

func (f *fakeConn) WriteBatch(ms []batchio.Message) (int, error) {
	for _, m := range ms {
		d, err := wire.Parse(slices.Clone(m.Buf), true)
		if err != nil {
			return 0, err
		}
		f.replies <- d
	}
	return len(ms), nil
}

// fakeServer runs a server's loop on a fakeConn, reading with the given number of
// receive slots (1 is what every system but Linux has).
type fakeServer struct {
	t       *testing.T
	s       *Server
	c       *fakeConn
	from    netip.AddrPort
	session uint64
	nextID  uint64
}

func startFakeServer(t *testing.T, slots int) *fakeServer {
	return startFakeServerWith(t, slots, nil)
}

// startFakeServerWith is startFakeServer with tweak, if not nil, applied to the server
// (its bc already the fakeConn) before the loop starts.
func startFakeServerWith(t *testing.T, slots int, tweak func(*Server)) *fakeServer {
	s, err := newServer(testConfig(t, t.TempDir()))
	require.NoError(t, err)
	c := newFakeConn()
	s.bc = c
	s.in = make([]batchio.Message, slots)
	for i := range s.in {
		s.in[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	if tweak != nil {
		tweak(s)
	}
	go s.loop()
	t.Cleanup(func() {
		c.close() // ends the loop's read; Close then waits for the loop
		require.NoError(t, s.Close())
	})
	fs := &fakeServer{t: t, s: s, c: c, from: netip.MustParseAddrPort("192.0.2.1:4000"), nextID: 1}
	c.push(fs.from, connectDatagram(0, 1, "light", nil))
	r := fs.reply()
	var f wire.Frame
	require.True(t, r.Next(&f))
	require.Equal(t, wire.OpCookie, f.Op)
	c.push(fs.from, connectDatagram(0, 1, "light", f.Cookie))
	r = fs.reply()
	require.True(t, r.Next(&f))
	require.Equal(t, wire.OpConnected, f.Op)
	fs.session = f.Connected().Session
	return fs
}

// lockUnlock is a datagram that LOCKs key and UNLOCKs it at once (two frames, so that
// the loop treats it as load and tries to read again before it blocks).
func (fs *fakeServer) lockUnlock(key string) []byte {
	id := fs.nextID
	fs.nextID += 2
	b := wire.BeginDatagram(nil, wire.Header{Session: fs.session, Floor: id})
	b = wire.AppendLock(b, id, 1000, key)
	b = wire.AppendUnlock(b, id+1, id, key)
	return wire.FinishDatagram(b)
}

// lockOnly is a datagram that LOCKs key for a minute.
func (fs *fakeServer) lockOnly(key string) []byte {
	id := fs.nextID
	fs.nextID++
	b := wire.BeginDatagram(nil, wire.Header{Session: fs.session, Floor: id})
	return wire.FinishDatagram(wire.AppendLock(b, id, 60_000, key))
}

// touch is a datagram of one TOUCH: a lone request, after which the loop blocks.
func (fs *fakeServer) touch() []byte {
	id := fs.nextID
	fs.nextID++
	b := wire.BeginDatagram(nil, wire.Header{Session: fs.session, Floor: id})
	return wire.FinishDatagram(wire.AppendEmpty(b, wire.OpTouch, id))
}

func (fs *fakeServer) reply() wire.Datagram {
	fs.t.Helper()
	select {
	case d := <-fs.c.replies:
		return d
	case <-time.After(5 * time.Second):
		fs.t.Fatal("no reply")
		return wire.Datagram{}
	}
}

// frames counts the frames of d.
func frames(d wire.Datagram) int {
	n := 0
	var f wire.Frame
	for d.Next(&f) {
		n++
	}
	return n
}

// TestServerBusyOnlyWhenBehind: BUSY means the loop has fallen behind, not that a read
// filled its slots. It once was set whenever a read filled every slot of the receive
// batch: where a read takes one datagram (every system but Linux, or the build tag
// netmutex_portable), every reply to a single light client was BUSY, and the client
// slowed down for nothing.
func TestServerBusyOnlyWhenBehind(t *testing.T) {
	for _, slots := range []int{1, 64} {
		t.Run("slots="+strconv.Itoa(slots), func(t *testing.T) {
			fs := startFakeServer(t, slots)

			// A light client: one datagram at a time, each answered before the next.
			for i := range 100 {
				d := fs.lockUnlock("k")
				if i%2 == 1 {
					d = fs.touch()
				}
				fs.c.push(fs.from, d)
				r := fs.reply()
				require.Zero(t, r.Flags&wire.FlagBusy, "reply %d to a light client is BUSY", i)
			}

			// A burst of 200 datagrams, queued before the loop reads any. With 64 slots:
			// a full read (not BUSY: it may have taken everything), two full reads that
			// each follow a full read (BUSY), then 8 datagrams (not BUSY: the queue is
			// empty). With one slot every read is full and says nothing: no BUSY.
			const burst = 200
			ds := make([][]byte, burst)
			for i := range ds {
				ds[i] = fs.lockUnlock("burst-" + strconv.Itoa(i))
			}
			fs.c.push(fs.from, ds...)
			busyFrames, allFrames := 0, 0
			for allFrames < 2*burst {
				r := fs.reply()
				n := frames(r)
				if r.Flags&wire.FlagBusy != 0 {
					busyFrames += n
				}
				allFrames += n
			}
			want := map[int]int{1: 0, 64: 2 * 2 * 64}[slots]
			require.Equal(t, want, busyFrames, "frames of BUSY replies")

			// Caught up: a lone request is not BUSY.
			fs.c.push(fs.from, fs.touch())
			require.Zero(t, fs.reply().Flags&wire.FlagBusy)
		})
	}
}

// TestServerLightClientNotBusy is the same over a real socket with the build's batch
// size: a client that waits for each reply never sees BUSY.
func TestServerLightClientNotBusy(t *testing.T) {
	s := startServer(t, testConfig(t, t.TempDir()))
	defer s.Close()
	c := newClient(t, s.Addr())
	c.connect("light")
	for i := range 50 {
		id := c.id()
		c.send(c.datagram(func(b []byte) []byte {
			b = wire.AppendLock(b, id, 1000, "k")
			return wire.AppendUnlock(b, c.id(), id, "k")
		}))
		h, fr, ok := c.recv(2 * time.Second)
		require.True(t, ok, "no reply to request %d", i)
		require.Len(t, fr, 2)
		require.Zero(t, h.Flags&wire.FlagBusy, "reply %d to a light client is BUSY", i)
	}
}
