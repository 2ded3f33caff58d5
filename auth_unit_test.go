package netmutex

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	testKeyHex  = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	otherKeyHex = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100"
)

func keyring(t *testing.T, lines string) *seal.Keyring {
	k, err := seal.ParseKeys(strings.NewReader(lines))
	require.NoError(t, err)
	return k
}

// fakeServer answers what a sealing client's connection writes, as the real server's
// network stage would: COOKIE for a CONNECT without one, CONNECTED for one with it, OK
// for a LOCK. Everything it sends is sealed by its own sealer.
type fakeServer struct {
	t      *testing.T
	m      *memConn
	keys   *seal.Keyring
	sealer *seal.Sealer

	mu       sync.Mutex
	connects []wire.Frame // copies of the CONNECT frames seen
	last     []byte       // the last datagram it sent
}

var testCookie = []byte("0123456789abcdef")

func (s *fakeServer) send(session uint64, add func(b []byte) []byte) {
	d := wire.FinishDatagram(add(wire.BeginDatagram(nil, wire.Header{Session: session})))
	sealed := s.sealer.Seal(nil, s.keys.Sealing(), d)
	s.mu.Lock()
	s.last = sealed
	s.mu.Unlock()
	s.m.reply(sealed)
}

func (s *fakeServer) onWrite(d []byte) {
	plain, _, _, err := s.keys.Open(nil, d)
	if !assert.NoError(s.t, err, "the client sends only sealed datagrams") {
		return
	}
	dg, err := wire.Parse(plain, false)
	if !assert.NoError(s.t, err) {
		return
	}
	var f wire.Frame
	for dg.Next(&f) {
		switch f.Op {
		case wire.OpConnect:
			s.mu.Lock()
			s.connects = append(s.connects, wire.Frame{ID: f.ID, Cookie: append([]byte(nil), f.Cookie...)})
			s.mu.Unlock()
			id := f.ID
			if string(f.Cookie) != string(testCookie) {
				s.send(0, func(b []byte) []byte { return wire.AppendCookie(b, id, testCookie) })
				continue
			}
			s.send(7, func(b []byte) []byte {
				return wire.AppendConnected(b, id, &wire.Connected{Session: 7, MaxTTLMs: 60000, SessionTimeoutMs: 60000, RetransmitWindowMs: 60000})
			})
		case wire.OpLock:
			id := f.ID
			s.send(dg.Session, func(b []byte) []byte { return wire.AppendOK(b, id, 42) })
		}
	}
}

func sealedConn(t *testing.T, clientKeys, serverKeys *seal.Keyring) (*serverConn, *fakeServer) {
	m := newMemConn()
	srv := &fakeServer{t: t, m: m, keys: serverKeys, sealer: seal.NewSealer()}
	m.onWrite = srv.onWrite
	c := newServerConn("mem", m, connConfig{keys: clientKeys, connectWait: 50 * time.Millisecond, notify: make(chan struct{}, 1)})
	c.start()
	t.Cleanup(c.close)
	return c, srv
}

func TestSealedHandshakeWithCookie(t *testing.T) {
	keys := keyring(t, "3 "+testKeyHex+"\n")
	c, srv := sealedConn(t, keys, keys)
	require.Eventually(t, func() bool { return c.session.Load() == 7 }, 5*time.Second, time.Millisecond)
	srv.mu.Lock()
	connects := append([]wire.Frame(nil), srv.connects...)
	srv.mu.Unlock()
	require.GreaterOrEqual(t, len(connects), 2)
	assert.Empty(t, connects[0].Cookie, "the first CONNECT has no cookie")
	assert.Equal(t, testCookie, connects[1].Cookie, "the CONNECT is sent again with the cookie")
	assert.Equal(t, connects[0].ID, connects[1].ID, "with the same nonce")

	r := c.requests.acquire(wire.OpLock, 3, int64(time.Second), 0)
	(&params{op: wire.OpLock, key: "k", ttlMs: 1000}).encode(r)
	res := c.roundTrip(r, nil)
	require.NoError(t, res.err)
	assert.Equal(t, wire.OpOK, res.op)
	assert.Equal(t, uint64(42), res.fence)
}

func TestForgedAndReplayedRepliesDropped(t *testing.T) {
	keys := keyring(t, "3 "+testKeyHex+"\n")
	c, srv := sealedConn(t, keys, keys)
	require.Eventually(t, func() bool { return c.session.Load() == 7 }, 5*time.Second, time.Millisecond)
	srv.m.onWrite = nil // the test answers by hand from here

	r := c.requests.acquire(wire.OpLock, 1, int64(time.Minute), 0)
	(&params{op: wire.OpLock, key: "k", ttlMs: 1000}).encode(r)
	done := make(chan result, 1)
	go func() { done <- c.roundTrip(r, nil) }()
	var id uint64
	require.Eventually(t, func() bool {
		for _, d := range srv.m.datagrams() {
			plain, _, _, err := keys.Open(nil, d)
			require.NoError(t, err)
			dg, err := wire.Parse(plain, false)
			require.NoError(t, err)
			var f wire.Frame
			for dg.Next(&f) {
				if f.Op == wire.OpLock {
					id = f.ID
				}
			}
		}
		return id != 0
	}, 5*time.Second, time.Millisecond)
	bad := c.stats.badIn.Load()

	// A plain OK, and an OK sealed under a key the client does not have: dropped.
	srv.m.reply(answer(func(b []byte) []byte { return wire.AppendOK(b, id, 1<<62) }))
	forger := &fakeServer{m: srv.m, keys: keyring(t, "3 "+otherKeyHex+"\n"), sealer: seal.NewSealer()}
	forger.send(7, func(b []byte) []byte { return wire.AppendOK(b, id, 1<<62) })
	// A genuine ISOLATED for another id, and a replay of the genuine CONNECTED
	// datagram: nothing changes.
	srv.send(7, func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpIsolated, id+1) })
	require.Eventually(t, func() bool { return c.stats.badIn.Load() == bad+2 }, 5*time.Second, time.Millisecond)
	assert.False(t, c.isolated.Load(), "an ISOLATED that answers nothing waiting isolates nobody")

	srv.send(7, func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpLocked, id) })
	srv.mu.Lock()
	genuine := srv.last
	srv.mu.Unlock()
	res := <-done
	assert.Equal(t, wire.OpLocked, res.op, "only the genuine reply completes the request")
	srv.m.reply(genuine)
	require.Eventually(t, func() bool { return c.stats.badIn.Load() == bad+3 }, 5*time.Second, time.Millisecond,
		"a replayed sealed datagram is refused by the window")
}

func TestAuthRefusalIsNoted(t *testing.T) {
	m := newMemConn()
	m.onWrite = func(d []byte) {
		// A server with other keys answers a sealed CONNECT it cannot open with a plain
		// ERROR AUTH of id 0.
		m.reply(wire.FinishDatagram(wire.AppendError(wire.BeginDatagram(nil, wire.Header{}), 0, wire.CodeAuth, "")))
	}
	c := newServerConn("mem", m, connConfig{keys: keyring(t, "3 "+testKeyHex+"\n"), connectWait: 50 * time.Millisecond, notify: make(chan struct{}, 1)})
	c.start()
	t.Cleanup(c.close)
	require.Eventually(t, func() bool { return c.refused.Load() == uint32(wire.CodeAuth) }, 5*time.Second, time.Millisecond)
	assert.Zero(t, c.session.Load())
	assert.ErrorIs(t, codeErr(wire.Code(c.refused.Load())), ErrAuth)
}

func TestFirstRequestIDIsRandom(t *testing.T) {
	seen := map[uint64]bool{}
	for i := 0; i < 8; i++ {
		c := newServerConn("mem", newMemConn(), connConfig{})
		assert.Less(t, c.nextID, uint64(firstIDRange+1))
		assert.NotZero(t, c.nextID)
		assert.Equal(t, c.nextID, c.floor)
		seen[c.nextID] = true
	}
	assert.Greater(t, len(seen), 4, "connections start their ids apart")
}
