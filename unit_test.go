package netmutex

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/cpu"
)

// memConn is an in-memory batchConn: what the loops write is kept (and may be answered
// by onWrite), and what a test queues with reply is read. It lets packing,
// retransmission and demultiplexing be tested without a kernel; the kernel path has the
// end-to-end tests.
type memConn struct {
	mu      sync.Mutex
	written [][]byte         // every datagram written, copied
	to      []netip.AddrPort // where each went: the target when it was written
	calls   int              // WriteBatch calls
	onWrite func(d []byte)

	// The socket's target, moved by retarget (the send loop's goroutine, as
	// WriteBatch, so onWrite sees the target its datagram goes to); retargetErr, if
	// set, refuses every move.
	target      netip.AddrPort
	moves       []netip.AddrPort
	retargetErr error

	replies chan []byte
	closed  chan struct{}
	once    sync.Once
}

var _ batchConn = (*memConn)(nil)

func newMemConn() *memConn {
	return &memConn{replies: make(chan []byte, 1024), closed: make(chan struct{})}
}

func (m *memConn) WriteBatch(ms []batchio.Message) (int, error) {
	m.mu.Lock()
	m.calls++
	var copies [][]byte
	for _, msg := range ms {
		d := append([]byte(nil), msg.Buf...)
		m.written = append(m.written, d)
		m.to = append(m.to, m.target)
		copies = append(copies, d)
	}
	hook := m.onWrite
	m.mu.Unlock()
	if hook != nil {
		for _, d := range copies {
			hook(d)
		}
	}
	return len(ms), nil
}

func (m *memConn) ReadBatch(ms []batchio.Message) (int, error) {
	select {
	case d := <-m.replies:
		ms[0].N = copy(ms[0].Buf, d)
	case <-m.closed:
		return 0, net.ErrClosed
	}
	n, _ := m.TryReadBatch(ms[1:])
	return n + 1, nil
}

func (m *memConn) ReadLoop(ms []batchio.Message, handle func(n int) batchio.ReadAction) error {
	return batchio.LoopOver(m, ms, handle)
}

func (m *memConn) TryReadBatch(ms []batchio.Message) (int, error) {
	n := 0
	for n < len(ms) {
		select {
		case d := <-m.replies:
			ms[n].N = copy(ms[n].Buf, d)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

func (m *memConn) Close() error {
	m.once.Do(func() { close(m.closed) })
	return nil
}

func (m *memConn) retarget(to netip.AddrPort) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.retargetErr != nil {
		return m.retargetErr
	}
	m.target = to
	m.moves = append(m.moves, to)
	return nil
}

// moved returns the targets of every move so far.
func (m *memConn) moved() []netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]netip.AddrPort(nil), m.moves...)
}

// current is where the socket points.
func (m *memConn) current() netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.target
}

func (m *memConn) reply(d []byte) { m.replies <- d }

func (m *memConn) datagrams() [][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([][]byte(nil), m.written...)
}

// frames parses every written datagram and returns its frames' ops and ids.
func frames(t *testing.T, ds [][]byte) (ops []wire.Op, ids []uint64) {
	t.Helper()
	var f wire.Frame
	for _, d := range ds {
		require.LessOrEqual(t, len(d), wire.MaxDatagram)
		dg, err := wire.Parse(d, false)
		require.NoError(t, err)
		for dg.Next(&f) {
			ops = append(ops, f.Op)
			ids = append(ids, f.ID)
		}
	}
	return ops, ids
}

func TestPackerFillsDatagrams(t *testing.T) {
	m := newMemConn()
	var st connStats
	var p packer
	p.init(m, &st, false, nil)
	const n = 200
	for i := uint64(1); i <= n; i++ {
		b := p.reserve(7, 1, wire.UnlockSize(3))
		*b = wire.AppendUnlock(*b, i, 100+i, "key")
	}
	require.True(t, p.flush())
	assert.False(t, p.flush(), "nothing left to write")

	ds := m.datagrams()
	ops, ids := frames(t, ds)
	require.Len(t, ids, n)
	for i, id := range ids {
		assert.Equal(t, uint64(i+1), id, "frames keep their order")
		assert.Equal(t, wire.OpUnlock, ops[i])
	}
	perDatagram := (wire.MaxDatagram - wire.HeaderSize - wire.TrailerSize) / wire.UnlockSize(3)
	assert.Len(t, ds, (n+perDatagram-1)/perDatagram, "datagrams are filled before a new one opens")
	assert.Equal(t, (len(ds)+batchio.MaxBatch-1)/batchio.MaxBatch, m.calls, "one system call per batch")
	assert.Equal(t, uint64(n), st.framesOut.Load())
	assert.Equal(t, uint64(len(ds)), st.datagramsOut.Load())
}

func TestPackerSessionAndUnbatched(t *testing.T) {
	t.Run("a new session opens a new datagram", func(t *testing.T) {
		m := newMemConn()
		var p packer
		p.init(m, &connStats{}, false, nil)
		for _, s := range []uint64{1, 1, 2} {
			b := p.reserve(s, 1, wire.FrameHeaderSize)
			*b = wire.AppendEmpty(*b, wire.OpTouch, s)
		}
		p.flush()
		ds := m.datagrams()
		require.Len(t, ds, 2)
		for i, want := range []uint64{1, 2} {
			dg, err := wire.Parse(ds[i], false)
			require.NoError(t, err)
			assert.Equal(t, want, dg.Session)
		}
	})
	t.Run("unbatched: a frame per datagram per call", func(t *testing.T) {
		m := newMemConn()
		var p packer
		p.init(m, &connStats{}, true, nil)
		for i := uint64(1); i <= 5; i++ {
			b := p.reserve(1, 1, wire.FrameHeaderSize)
			*b = wire.AppendEmpty(*b, wire.OpTouch, i)
		}
		p.flush()
		assert.Len(t, m.datagrams(), 5)
		assert.Equal(t, 5, m.calls)
	})
}

// connectedConn is a serverConn over m that already has session 7, as if CONNECTED had
// arrived, with its loops running.
func connectedConn(t *testing.T, m *memConn) *serverConn {
	c := newServerConn("mem", m, connConfig{connectWait: time.Second, notify: make(chan struct{}, 1)})
	c.server.Store(&serverInfo{sessionTimeout: time.Minute, retransmitWindow: time.Minute})
	c.session.Store(7)
	// As if its CONNECT had just left: a lastSend of 0 would make a TOUCH due at once in a
	// test process older than a third of the session timeout, ahead of what the test sends.
	c.lastSend = nanotime()
	c.start()
	t.Cleanup(c.close)
	return c
}

// answer returns a reply datagram for session 7 holding what add appends.
func answer(add func(b []byte) []byte) []byte {
	return wire.FinishDatagram(add(wire.BeginDatagram(nil, wire.Header{Session: 7})))
}

func TestRetransmitKeepsTheID(t *testing.T) {
	m := newMemConn()
	var mu sync.Mutex
	var lockIDs []uint64
	m.onWrite = func(d []byte) {
		dg, err := wire.Parse(d, false)
		if err != nil {
			return
		}
		var f wire.Frame
		for dg.Next(&f) {
			if f.Op != wire.OpLock {
				continue
			}
			mu.Lock()
			lockIDs = append(lockIDs, f.ID)
			first := len(lockIDs) == 1
			mu.Unlock()
			if !first { // the first copy is lost
				m.reply(answer(func(b []byte) []byte { return wire.AppendOK(b, f.ID, 42) }))
			}
		}
	}
	c := connectedConn(t, m)
	r := c.requests.acquire(wire.OpLock, 3, int64(20*time.Millisecond), 0)
	(&params{op: wire.OpLock, key: "k", ttlMs: 1000}).encode(r)
	res := c.roundTrip(r, nil)
	require.NoError(t, res.err)
	assert.Equal(t, wire.OpOK, res.op)
	assert.Equal(t, uint64(42), res.fence)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, lockIDs, 2, "one loss, one retransmission")
	assert.Equal(t, lockIDs[0], lockIDs[1], "a retransmission reuses the request id")
	assert.Equal(t, res.id, lockIDs[0])
	assert.Equal(t, uint64(1), c.stats.retransmits.Load())
}

func TestGiveUpAfterAttempts(t *testing.T) {
	m := newMemConn() // nothing ever answers
	c := connectedConn(t, m)
	r := c.requests.acquire(wire.OpLock, 3, int64(5*time.Millisecond), 0)
	(&params{op: wire.OpLock, key: "k", ttlMs: 1000}).encode(r)
	res := c.roundTrip(r, nil)
	require.ErrorIs(t, res.err, ErrTooMuchRetries)
	require.Eventually(t, func() bool {
		ops, _ := frames(t, m.datagrams())
		return assert.ObjectsAreEqual([]wire.Op{wire.OpLock, wire.OpLock, wire.OpLock, wire.OpUnlock}, ops)
	}, 5*time.Second, time.Millisecond, "three attempts, then the clean-up UNLOCK of a LOCK that may have been granted")
}

func TestDemuxDropsStrayReplies(t *testing.T) {
	m := newMemConn()
	c := connectedConn(t, m)
	// Replies to ids never sent, and a corrupt datagram: dropped, nothing breaks.
	m.reply(answer(func(b []byte) []byte { return wire.AppendOK(b, 999, 1) }))
	bad := answer(func(b []byte) []byte { return wire.AppendOK(b, 1, 1) })
	bad[len(bad)-1] ^= 1
	m.reply(bad)
	require.Eventually(t, func() bool { return c.stats.badIn.Load() == 1 && c.stats.framesIn.Load() == 1 },
		5*time.Second, time.Millisecond)

	m.onWrite = nil
	r := c.requests.acquire(wire.OpLock, 1, int64(time.Minute), 0)
	(&params{op: wire.OpLock, key: "k", ttlMs: 1000}).encode(r)
	done := make(chan result, 1)
	go func() { done <- c.roundTrip(r, nil) }()
	var id uint64
	require.Eventually(t, func() bool {
		_, ids := frames(t, m.datagrams())
		if len(ids) > 0 {
			id = ids[0]
		}
		return id != 0
	}, 5*time.Second, time.Millisecond)
	m.reply(answer(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpLocked, id+1) }))
	m.reply(answer(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpLocked, id) }))
	m.reply(answer(func(b []byte) []byte { return wire.AppendOK(b, id, 5) })) // a duplicate: too late
	res := <-done
	assert.Equal(t, wire.OpLocked, res.op, "only the reply carrying the request's id completes it")
	assert.Equal(t, id, res.id)
}

// TestLateReplyFromAnotherConnection: a receive loop that read a record from its table
// just before the record finished, was recycled, and was reused on another connection
// under the same numeric id (ids are counted per connection) must not complete it.
func TestLateReplyFromAnotherConnection(t *testing.T) {
	a := newServerConn("a", newMemConn(), connConfig{connectWait: time.Second})
	b := newServerConn("b", newMemConn(), connConfig{connectWait: time.Second})
	r := b.requests.acquire(wire.OpLock, 1, int64(time.Minute), 0)
	const id = 5
	require.True(t, b.table.claim(id, r))
	require.True(t, r.state.CompareAndSwap(stateQueued, id))

	late := wire.Frame{Op: wire.OpOK, ID: id, Fence: 1}
	a.deliver(r, 7, &late) // a's stale pointer to what is now b's record
	assert.Equal(t, uint64(id), r.state.Load(), "a reply on another connection completed the request")

	b.deliver(r, 7, &wire.Frame{Op: wire.OpOK, ID: id, Fence: 2})
	assert.Equal(t, uint64(stateDone), r.state.Load())
	assert.Equal(t, uint64(2), r.res.fence)
	assert.Nil(t, b.table.lookup(id), "the slot is free once its request completed")
}

// TestFullRingHonoursTheCaller: with the ring full, a caller waits for room only as
// long as its context, deadline or attempts allow, and the record is not leaked.
func TestFullRingHonoursTheCaller(t *testing.T) {
	c := newServerConn("full", newMemConn(), connConfig{connectWait: time.Second}) // no loops: nothing drains
	filler := &request{}
	for c.ring.push(filler) {
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	r := c.requests.acquire(wire.OpLock, 1, int64(time.Hour), 0)
	start := time.Now()
	res := c.roundTrip(r, ctx)
	assert.ErrorIs(t, res.err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, int32(0), r.refs.Load(), "both references dropped")

	r = c.requests.acquire(wire.OpLock, 2, int64(10*time.Millisecond), 0)
	res = c.roundTrip(r, nil)
	assert.ErrorIs(t, res.err, ErrTooMuchRetries, "the original form gives up after its attempts' time")

	r = c.requests.acquire(wire.OpLock, 1, int64(time.Hour), nanotime()+int64(10*time.Millisecond))
	res = c.roundTrip(r, nil)
	assert.ErrorIs(t, res.err, context.DeadlineExceeded, "a deadline ends the wait")
}

func TestCacheLineLayout(t *testing.T) {
	line := unsafe.Sizeof(cpu.CacheLinePad{})
	var s connStats
	sendEnd := unsafe.Offsetof(s.retransmits) + unsafe.Sizeof(s.retransmits)
	assert.GreaterOrEqual(t, unsafe.Offsetof(s.framesIn)-sendEnd, line, "send and receive counters share a cache line")
	var q ring
	assert.GreaterOrEqual(t, unsafe.Offsetof(q.tail)-unsafe.Offsetof(q.head), line)
	assert.Equal(t, line, unsafe.Sizeof(ringSlot{}), "a ring slot is one cache line")
}

// TestOrphanKeptUntilSignalled: a clean-up UNLOCK has no caller, so the send loop alone
// drops it. It must not while its completer has won the state word but not yet written
// the result and signalled done: recycled then, the record's next caller got that
// signal, and an empty or foreign result, as its own (the ErrRefused "reply opcode 0x0"
// of a cluster linearizability run in CI).
func TestOrphanKeptUntilSignalled(t *testing.T) {
	c := newServerConn("orphan", newMemConn(), connConfig{connectWait: time.Second}) // no loops
	r := c.requests.acquire(wire.OpUnlock, 1, int64(time.Minute), 0)
	r.refs.Store(1)
	r.orphan = true
	(&params{op: wire.OpUnlock, lockID: 5, key: "k"}).encode(r)
	c.list = append(c.list, r)
	c.send(r, nanotime(), 7)
	id := r.id
	require.NotZero(t, id)

	// The receive loop has won the state word; its result and signal are still to come.
	require.True(t, r.state.CompareAndSwap(id, stateDone))
	c.scan(nanotime(), 7)
	require.Len(t, c.list, 1, "dropped while its completer was at work")
	require.Equal(t, int32(1), r.refs.Load(), "recycled while its completer was at work")

	r.res = result{op: wire.OpOK, id: id}
	r.done <- struct{}{}
	c.scan(nanotime(), 7)
	require.Empty(t, c.list, "dropped once signalled")
	require.Equal(t, int32(0), r.refs.Load())
	require.Nil(t, c.table.lookup(id), "its slot is free")
	select {
	case <-r.done:
		t.Fatal("a signal left for the record's next use")
	default:
	}
}
