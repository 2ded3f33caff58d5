package server

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testConfig(t *testing.T, dir string) Config {
	cfg := DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = dir
	cfg.Logger = quiet
	return cfg
}

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	require.NoError(t, err, "New")
	return s
}

// client is a tiny hand-rolled client speaking internal/wire directly; with a key it
// seals what it sends and opens what it gets (newSealedClient).
type client struct {
	t       testing.TB
	conn    *net.UDPConn
	session uint64
	floor   uint64
	nextID  uint64
	buf     []byte

	ring     *seal.Keyring // opens replies; nil: plain
	key      *seal.Key     // seals requests; nil: plain
	sealer   *seal.Sealer
	lastSent []byte // the last datagram sent, as it went on the wire
}

// newSealedClient is a client that seals under key id of ring and opens replies with ring.
func newSealedClient(t testing.TB, addr interface{ String() string }, ring *seal.Keyring, id uint8) *client {
	t.Helper()
	c := newClient(t, addr)
	c.ring, c.key, c.sealer = ring, ring.Lookup(id), seal.NewSealer()
	require.NotNil(t, c.key, "key %d", id)
	return c
}

func newClient(t testing.TB, addr interface{ String() string }) *client {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr.String())
	require.NoError(t, err)
	conn, err := net.DialUDP("udp", nil, ua)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, nextID: 1, buf: make([]byte, 2048)}
}

func (c *client) id() uint64 { c.nextID++; return c.nextID - 1 }

// datagram builds a datagram of this client's session from frames appended by add.
func (c *client) datagram(add func(b []byte) []byte) []byte {
	b := wire.BeginDatagram(nil, wire.Header{Session: c.session, Floor: c.floor})
	b = add(b)
	return wire.FinishDatagram(b)
}

// send sends the plain datagram d, sealed if the client has a key.
func (c *client) send(d []byte) {
	c.t.Helper()
	if c.key != nil {
		d = c.sealer.Seal(nil, c.key, d)
	}
	c.sendRaw(d)
}

// sendRaw sends d as it is.
func (c *client) sendRaw(d []byte) {
	c.t.Helper()
	c.lastSent = d
	_, err := c.conn.Write(d)
	require.NoError(c.t, err)
}

// recvRaw reads one datagram as it came; ok is false on timeout.
func (c *client) recvRaw(wait time.Duration) ([]byte, bool) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(wait))
	n, err := c.conn.Read(c.buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, false
		}
		c.t.Fatal(err)
	}
	return append([]byte(nil), c.buf[:n]...), true
}

// recv reads one reply datagram and returns its frames; ok is false on timeout. A sealed
// reply must open with the client's keys.
func (c *client) recv(wait time.Duration) (wire.Header, []wire.Frame, bool) {
	c.t.Helper()
	raw, ok := c.recvRaw(wait)
	if !ok {
		return wire.Header{}, nil, false
	}
	if seal.IsSealed(raw) {
		require.NotNil(c.t, c.ring, "a sealed reply to a plain client")
		plain, _, _, err := c.ring.Open(nil, raw)
		require.NoError(c.t, err, "a sealed reply that does not open")
		require.LessOrEqual(c.t, len(plain), wire.MaxDatagram-seal.Overhead)
		raw = plain
	}
	d, err := wire.Parse(raw, true)
	require.NoError(c.t, err, "bad reply datagram")
	var frames []wire.Frame
	var f wire.Frame
	for d.Next(&f) {
		frames = append(frames, f)
	}
	return d.Header, frames, true
}

// call sends one request frame and returns the one reply frame.
func (c *client) call(add func(b []byte) []byte) wire.Frame {
	c.t.Helper()
	c.send(c.datagram(add))
	_, frames, ok := c.recv(2 * time.Second)
	require.True(c.t, ok, "no reply")
	require.Len(c.t, frames, 1, "reply frames")
	return frames[0]
}

// connectDatagram is a CONNECT padded to the least size, with cookie (nil: none).
func connectDatagram(session, nonce uint64, info string, cookie []byte) []byte {
	b := wire.BeginDatagram(nil, wire.Header{Session: session})
	b = wire.AppendConnect(b, nonce, info, cookie)
	b = wire.AppendPad(b, wire.MinConnectDatagram-len(b)-wire.TrailerSize)
	return wire.FinishDatagram(b)
}

// randomNonce is a CONNECT nonce: random, non-zero.
func randomNonce() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1
}

// getCookie sends a CONNECT without a cookie and returns the COOKIE it draws: one
// datagram, no larger than the CONNECT.
func (c *client) getCookie(nonce uint64, info string) []byte {
	c.t.Helper()
	c.send(connectDatagram(0, nonce, info, nil))
	raw, ok := c.recvRaw(2 * time.Second)
	require.True(c.t, ok, "no COOKIE")
	require.LessOrEqual(c.t, len(raw), len(c.lastSent), "COOKIE larger than the CONNECT")
	c.requireQuiet(100*time.Millisecond, "after the COOKIE")
	f := c.frames(raw)
	require.Len(c.t, f, 1)
	require.Equal(c.t, wire.OpCookie, f[0].Op, "%+v", f[0])
	require.Equal(c.t, nonce, f[0].ID)
	return f[0].Cookie
}

// frames parses a datagram received as raw (opening it if sealed).
func (c *client) frames(raw []byte) []wire.Frame {
	c.t.Helper()
	if seal.IsSealed(raw) {
		var err error
		raw, _, _, err = c.ring.Open(nil, raw)
		require.NoError(c.t, err)
	}
	d, err := wire.Parse(raw, true)
	require.NoError(c.t, err)
	var fs []wire.Frame
	var f wire.Frame
	for d.Next(&f) {
		f.Cookie = slices.Clone(f.Cookie)
		fs = append(fs, f)
	}
	return fs
}

// requireQuiet checks that nothing arrives for wait.
func (c *client) requireQuiet(wait time.Duration, what string) {
	c.t.Helper()
	raw, ok := c.recvRaw(wait)
	require.False(c.t, ok, "%s: got %d bytes", what, len(raw))
}

// connect does the round trip of a new session: CONNECT, COOKIE, CONNECT with the cookie,
// CONNECTED.
func (c *client) connect(info string) wire.Connected {
	c.t.Helper()
	nonce := randomNonce()
	cookie := c.getCookie(nonce, info)
	c.send(connectDatagram(0, nonce, info, cookie))
	_, frames, ok := c.recv(2 * time.Second)
	require.True(c.t, ok, "no reply to CONNECT")
	require.Len(c.t, frames, 1)
	f := frames[0]
	require.Equal(c.t, wire.OpConnected, f.Op, "CONNECT: %+v", f)
	require.Equal(c.t, nonce, f.ID, "CONNECT: %+v", f)
	conn := f.Connected()
	c.session = conn.Session
	return conn
}

func (c *client) lock(key string, ttl time.Duration) (id uint64, f wire.Frame) {
	c.t.Helper()
	id = c.id()
	return id, c.call(func(b []byte) []byte { return wire.AppendLock(b, id, uint32(ttl/time.Millisecond), key) })
}

// lockFrame is lock without the id.
func (c *client) lockFrame(key string, ttl time.Duration) wire.Frame {
	c.t.Helper()
	_, f := c.lock(key, ttl)
	return f
}

func (c *client) unlock(key string, lockID uint64) wire.Frame {
	c.t.Helper()
	id := c.id()
	return c.call(func(b []byte) []byte { return wire.AppendUnlock(b, id, lockID, key) })
}

func (c *client) touch() wire.Frame {
	c.t.Helper()
	id := c.id()
	return c.call(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpTouch, id) })
}

// requireOp checks the opcode of a reply frame.
func requireOp(t *testing.T, f wire.Frame, op wire.Op, what string) {
	t.Helper()
	require.Equal(t, op, f.Op, "%s: %+v", what, f)
}

func TestServerConnectLockUnlock(t *testing.T) {
	s := startServer(t, testConfig(t, t.TempDir()))
	defer s.Close()
	a, b := newClient(t, s.Addr()), newClient(t, s.Addr())
	conn := a.connect("host-a")
	assert.Equal(t, uint32(60000), conn.MaxTTLMs)
	assert.Equal(t, uint32(15000), conn.SessionTimeoutMs)
	assert.Equal(t, uint32(60000), conn.RetransmitWindowMs)
	assert.Equal(t, uint16(1), conn.ServerID)
	require.Equal(t, []wire.Server{{ID: 1, Addr: s.Addr().String()}}, conn.Servers, "just this server")
	b.connect("host-b")
	id, f := a.lock("k", time.Second)
	requireOp(t, f, wire.OpOK, "LOCK")
	require.NotZero(t, f.Fence, "LOCK: %+v", f)
	require.Equal(t, id, f.ID, "LOCK: %+v", f)
	requireOp(t, b.lockFrame("k", time.Second), wire.OpLocked, "second LOCK")
	requireOp(t, a.unlock("k", id), wire.OpOK, "UNLOCK")
	requireOp(t, b.lockFrame("k", time.Second), wire.OpOK, "LOCK after UNLOCK")
	// Unknown session, and a PING without one.
	c := newClient(t, s.Addr())
	c.session = 12345
	requireOp(t, c.touch(), wire.OpDisconnected, "unknown session")
	c.session = 0
	requireOp(t, c.call(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpPing, 1) }), wire.OpPong, "PING")
}

func TestServerPacksReplies(t *testing.T) {
	s := startServer(t, testConfig(t, t.TempDir()))
	defer s.Close()
	c := newClient(t, s.Addr())
	c.connect("x")
	const n = 90 // 90 OK replies of 20 bytes do not fit in one datagram
	first := c.nextID
	var ds [][]byte
	for i := 0; i < 3; i++ {
		ds = append(ds, c.datagram(func(b []byte) []byte {
			for j := 0; j < n/3; j++ {
				id := c.id()
				b = wire.AppendLock(b, id, 1000, "key-"+string(rune('a'+i))+string(rune('a'+j)))
			}
			return b
		}))
	}
	for _, d := range ds {
		c.send(d)
	}
	seen := map[uint64]bool{}
	for len(seen) < n {
		h, frames, ok := c.recv(2 * time.Second)
		require.True(t, ok, "got %d of %d replies", len(seen), n)
		require.Equal(t, c.session, h.Session, "reply header session")
		for _, f := range frames {
			if f.Op != wire.OpOK || f.ID < first || f.ID >= first+n || seen[f.ID] {
				t.Fatalf("reply %+v", f)
			}
			seen[f.ID] = true
		}
	}
	st := s.Stats()
	assert.GreaterOrEqual(t, st.Replies, uint64(n+1), "replies")
	assert.Equal(t, uint64(n), st.Grants, "grants")
}

func TestServerBadDatagrams(t *testing.T) {
	s := startServer(t, testConfig(t, t.TempDir()))
	defer s.Close()
	c := newClient(t, s.Addr())
	c.connect("x")
	good := func() []byte {
		return c.datagram(func(b []byte) []byte { return wire.AppendLock(b, 1000, 1000, "victim") })
	}
	recrc := func(d []byte) []byte {
		n := len(d) - wire.TrailerSize
		binary.BigEndian.PutUint32(d[n:], crc32.Checksum(d[:n], crc32.MakeTable(crc32.Castagnoli)))
		return d
	}
	bad := map[string][]byte{
		"garbage":       []byte("hello, is this the lock server?"),
		"empty":         {},
		"short":         good()[:20],
		"version":       recrc(func() []byte { d := good(); d[0] = 2; return d }()),
		"reserved flag": recrc(func() []byte { d := good(); d[1] = 2; return d }()),
		"busy flag":     recrc(func() []byte { d := good(); d[1] = wire.FlagBusy; return d }()),
		"length":        recrc(func() []byte { d := good(); d[3]++; return d }()),
		"checksum":      func() []byte { d := good(); d[len(d)-1] ^= 1; return d }(),
		"truncated frame": c.datagram(func(b []byte) []byte {
			b = wire.AppendLock(b, 1000, 1000, "victim")
			binary.BigEndian.PutUint16(b[wire.HeaderSize+2:], 200)
			return b
		}),
		"unknown opcode": c.datagram(func(b []byte) []byte {
			b = wire.AppendLock(b, 1000, 1000, "victim")
			return wire.AppendEmpty(b, 0x7f, 1001)
		}),
		"reply opcode": c.datagram(func(b []byte) []byte {
			b = wire.AppendLock(b, 1000, 1000, "victim")
			return wire.AppendOK(b, 1001, 1)
		}),
		"small connect": c.datagram(func(b []byte) []byte { return wire.AppendConnect(b, 99, "x", nil) }),
		"oversized": c.datagram(func(b []byte) []byte {
			b = wire.AppendLock(b, 1000, 1000, "victim")
			return wire.AppendPad(b, wire.MaxDatagram)
		}),
	}
	for name, d := range bad {
		c.send(d)
		_, frames, ok := c.recv(50 * time.Millisecond)
		require.False(t, ok, "%s: got a reply %+v", name, frames)
	}
	// Counted once the loop has read the last one, which a loaded machine may do after
	// the quiet window.
	require.Eventually(t, func() bool { return s.Stats().BadDatagrams >= uint64(len(bad)) }, 2*time.Second, time.Millisecond)
	require.Equal(t, uint64(len(bad)), s.Stats().BadDatagrams)
	// No state changed: the key is free, and the server still answers.
	requireOp(t, c.lockFrame("victim", time.Second), wire.OpOK, "LOCK after bad datagrams")
}

func TestServerFencesAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	var last uint64
	for round := 0; round < 3; round++ {
		cfg := testConfig(t, dir)
		cfg.MaxTTL = 100 * time.Millisecond // the lock-delay after Abort
		s := startServer(t, cfg)
		c := newClient(t, s.Addr())
		c.connect("x")
		for i := 0; i < 3; i++ {
			id, f := c.lock("k", 50*time.Millisecond)
			for f.Op == wire.OpError && f.Code == wire.CodeLockDelay {
				time.Sleep(20 * time.Millisecond)
				id, f = c.lock("k", 50*time.Millisecond)
			}
			if f.Op != wire.OpOK || f.Fence <= last {
				t.Fatalf("round %d: %+v after fence %d", round, f, last)
			}
			last = f.Fence
			c.unlock("k", id)
		}
		if round == 1 {
			require.NoError(t, s.Abort())
			continue
		}
		require.NoError(t, s.Close())
	}
}

func TestServerLockDelay(t *testing.T) {
	const maxTTL = 300 * time.Millisecond
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.MaxTTL = maxTTL

	// Fresh directory: no delay.
	s := startServer(t, cfg)
	require.False(t, s.LockDelay(), "lock-delay on a fresh directory")
	c := newClient(t, s.Addr())
	c.connect("x")
	requireOp(t, c.lockFrame("k", 100*time.Millisecond), wire.OpOK, "fresh")
	s.Abort() // a crash with a lock held

	s = startServer(t, cfg)
	start := time.Now()
	c = newClient(t, s.Addr())
	c.connect("x")
	if _, f := c.lock("k", 100*time.Millisecond); f.Op != wire.OpError || f.Code != wire.CodeLockDelay {
		if time.Since(start) < maxTTL { // else the machine was too slow to see the delay
			t.Fatalf("after a crash: %+v, want LOCK_DELAY", f)
		}
	}
	for {
		time.Sleep(50 * time.Millisecond)
		_, f := c.lock("k", 100*time.Millisecond)
		if f.Op == wire.OpOK {
			if since := time.Since(start); since < maxTTL {
				t.Fatalf("granted %v after start, within the lock-delay", since)
			}
			break
		}
		if f.Code != wire.CodeLockDelay || time.Since(start) > 5*time.Second {
			t.Fatalf("after the delay: %+v", f)
		}
	}
	s.Close() // clean, but with the lock held: the next start delays too

	s = startServer(t, cfg)
	require.True(t, s.LockDelay(), "no lock-delay after a clean stop with locks held")
	s.Close() // clean, no locks (nothing was granted)

	s = startServer(t, cfg)
	defer s.Close()
	require.False(t, s.LockDelay(), "lock-delay after a clean stop with no lock")
	c = newClient(t, s.Addr())
	c.connect("x")
	requireOp(t, c.lockFrame("k", 100*time.Millisecond), wire.OpOK, "after a clean stop")
}

func TestServerCorruptState(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, testConfig(t, dir))
	s.Close()
	p := filepath.Join(dir, stateFile)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	b[12] ^= 0xff // the fence high-water mark
	require.NoError(t, os.WriteFile(p, b, 0o600))
	if s, err := New(testConfig(t, dir)); !errors.Is(err, ErrCorruptState) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("New on a corrupt state file: %v, want ErrCorruptState", err)
	}
}

func TestServerDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, testConfig(t, dir))
	if s2, err := New(testConfig(t, dir)); !errors.Is(err, ErrDataDirInUse) {
		if s2 != nil {
			s2.Close()
		}
		t.Fatalf("second server on one DataDir: %v, want ErrDataDirInUse", err)
	}
	s.Close()
	s = startServer(t, testConfig(t, dir))
	s.Close()
}

func TestServerCreatesDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s := startServer(t, testConfig(t, dir))
	s.Close()
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "data dir permissions")
	require.ErrorIs(t, s.Close(), ErrAlreadyClosed, "second Close")
}

func TestServerIsolation(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "isolated")
	cfg := testConfig(t, filepath.Join(dir, "data"))
	cfg.IsolateCmd = "cat > " + out
	s := startServer(t, cfg)
	defer s.Close()
	a, b := newClient(t, s.Addr()), newClient(t, s.Addr())
	a.connect("reboot host-a please")
	b.connect("b")
	requireOp(t, a.lockFrame("k", 50*time.Millisecond), wire.OpOK, "LOCK")
	// No traffic: the expiry must happen on the loop's tick alone.
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().IsolationsRun == 0 {
		if time.Now().After(deadline) {
			t.Fatal("isolation command never ran")
		}
		time.Sleep(10 * time.Millisecond)
	}
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, "reboot host-a please", string(got), "the isolation command's standard input")
	requireOp(t, a.touch(), wire.OpIsolated, "isolated session")
	// The key is released once the command has finished.
	for {
		_, f := b.lock("k", time.Second)
		if f.Op == wire.OpOK {
			break
		}
		if f.Op != wire.OpLocked || time.Now().After(deadline) {
			t.Fatalf("LOCK after isolation: %+v", f)
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := s.Stats()
	assert.Equal(t, uint64(1), st.Isolations)
	assert.Zero(t, st.IsolationsFailed)
}

func TestServerIsolationKeepsKeyUntilDone(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	cfg := testConfig(t, filepath.Join(dir, "data"))
	// The command waits until the test creates the gate file.
	cfg.IsolateCmd = "while [ ! -e " + gate + " ]; do sleep 0.01; done"
	s := startServer(t, cfg)
	defer s.Close()
	a, b := newClient(t, s.Addr()), newClient(t, s.Addr())
	a.connect("a")
	b.connect("b")
	a.lock("k", 20*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	requireOp(t, a.touch(), wire.OpIsolated, "isolated session")
	requireOp(t, b.lockFrame("k", time.Second), wire.OpLocked, "key of an isolating session")
	require.NoError(t, os.WriteFile(gate, nil, 0o600))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, f := b.lock("k", time.Second); f.Op == wire.OpOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("key never released")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServerRedirect(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Redirect = &wire.Server{ID: 2, Addr: "127.0.0.1:9"}
	s := startServer(t, cfg)
	defer s.Close()
	c := newClient(t, s.Addr())
	f := c.call(func(b []byte) []byte {
		b = wire.AppendConnect(b, 77, "x", nil)
		return wire.AppendPad(b, wire.MinConnectDatagram-len(b)-wire.TrailerSize)
	})
	requireOp(t, f, wire.OpRedirect, "CONNECT to a follower")
	assert.Equal(t, uint64(77), f.ID)
	assert.Equal(t, uint16(2), f.ServerID)
	assert.Equal(t, "127.0.0.1:9", string(f.Addr))
	c.session = 5
	f = c.lockFrame("k", time.Second)
	requireOp(t, f, wire.OpError, "LOCK on a follower (REDIRECT is for CONNECT only)")
	assert.Equal(t, wire.CodeNotLeader, f.Code, "the client keeps its session and tries another server")
}

func TestServerSessionTimeout(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.SessionTimeout = 100 * time.Millisecond
	s := startServer(t, cfg)
	defer s.Close()
	c := newClient(t, s.Addr())
	c.connect("x")
	time.Sleep(300 * time.Millisecond)
	requireOp(t, c.touch(), wire.OpDisconnected, "after the timeout")
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.DataDir = "x"
	require.NoError(t, ok.Validate())
	cases := map[string]func(*Config){
		"no dir":      func(c *Config) { c.DataDir = "" },
		"ttl":         func(c *Config) { c.MaxTTL = 0 },
		"timeout":     func(c *Config) { c.SessionTimeout = time.Microsecond },
		"servers":     func(c *Config) { c.Servers = make([]wire.Server, 40) },
		"long server": func(c *Config) { c.Servers = []wire.Server{{Addr: strings.Repeat("x", 480)}} },
	}
	for name, mutate := range cases {
		c := ok
		mutate(&c)
		assert.Error(t, c.Validate(), "%s: accepted", name)
	}
}

// TestConfigDefaults: DefaultConfig holds every default, and New fills each zero field
// that has one, so a Config built field by field serves with the same limits.
func TestConfigDefaults(t *testing.T) {
	require.Equal(t, Config{
		ListenAddr:       DefaultListenAddr,
		MaxTTL:           DefaultMaxTTL,
		SessionTimeout:   DefaultSessionTimeout,
		RetransmitWindow: DefaultRetransmitWindow,
		IsolateTimeout:   DefaultIsolateTimeout,
		ServerID:         DefaultServerID,

		MaxSessions:        DefaultMaxSessions,
		MaxSessionsPerAddr: DefaultMaxSessionsPerAddr,
		MaxLocksPerSession: DefaultMaxLocksPerSession,
		MaxLocks:           DefaultMaxLocks,
		ConnectRate:        DefaultConnectRate,
		MaxIsolations:      DefaultMaxIsolations,

		MaxWaitersPerKey:     DefaultMaxWaitersPerKey,
		MaxWaitersPerSession: DefaultMaxWaitersPerSession,
	}, DefaultConfig())
	s := startServer(t, Config{ListenAddr: "127.0.0.1:0", DataDir: t.TempDir(), Logger: quiet})
	defer s.Close()
	conn := newClient(t, s.Addr()).connect("x")
	assert.Equal(t, uint32(DefaultMaxTTL/time.Millisecond), conn.MaxTTLMs)
	assert.Equal(t, uint32(DefaultSessionTimeout/time.Millisecond), conn.SessionTimeoutMs)
	assert.Equal(t, uint32(DefaultRetransmitWindow/time.Millisecond), conn.RetransmitWindowMs)
	assert.Equal(t, uint16(DefaultServerID), conn.ServerID)
	assert.Equal(t, DefaultIsolateTimeout, s.cfg.IsolateTimeout)
}
