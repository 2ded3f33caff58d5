package server

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// lockUntilGranted LOCKs key until it is granted, failing on anything but LOCK_DELAY or
// after within; it returns when the grant came, counted from start.
func lockUntilGranted(t *testing.T, c *client, key string, start time.Time, within time.Duration) (time.Duration, wire.Frame) {
	t.Helper()
	for {
		_, f := c.lock(key, 50*time.Millisecond)
		if f.Op == wire.OpOK {
			return time.Since(start), f
		}
		require.Equal(t, wire.CodeLockDelay, f.Code, "LOCK: %+v", f)
		require.Less(t, time.Since(start), within, "still LOCK_DELAY")
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStoreLockDelayCoversLargestTTL: a long lock, a crash, a restart with a shorter
// MaxTTL: the key stays refused for the long TTL, not for the new MaxTTL (issue 9,
// item 7: it was granted 1.8 s after a 60 s lock).
func TestStoreLockDelayCoversLargestTTL(t *testing.T) {
	const long, short = 1500 * time.Millisecond, 100 * time.Millisecond
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.MaxTTL = long
	s := startServer(t, cfg)
	c := newClient(t, s.Addr())
	c.connect("a")
	requireOp(t, c.lockFrame("k", long), wire.OpOK, "the long lock")
	require.NoError(t, s.Abort())

	cfg.MaxTTL = short
	start := time.Now() // before the server's clock starts
	s = startServer(t, cfg)
	require.True(t, s.LockDelay())
	require.Equal(t, long, s.LockDelayLength(), "the lock-delay covers the longest TTL ever served")
	c = newClient(t, s.Addr())
	c.connect("b")
	time.Sleep(3 * short)
	_, f := c.lock("k", short)
	require.Equal(t, wire.CodeLockDelay, f.Code, "LOCK past the new MaxTTL, within the old one: %+v", f)
	took, _ := lockUntilGranted(t, c, "k", start, long+5*time.Second)
	assert.GreaterOrEqual(t, took, long, "granted within the longest TTL")

	// A second crash before any write settled the record: still the long delay.
	require.NoError(t, s.Abort())
	s = startServer(t, cfg)
	assert.Equal(t, long, s.LockDelayLength(), "the record outlives a crash")
	// A clean stop after the delay ran out records the short MaxTTL: the next delay is
	// the short one.
	time.Sleep(long)
	c = newClient(t, s.Addr())
	c.connect("c")
	requireOp(t, c.lockFrame("k", short), wire.OpOK, "after the delay")
	require.NoError(t, s.Close()) // with the lock held: the next start delays
	s = startServer(t, cfg)
	defer s.Close()
	assert.True(t, s.LockDelay())
	assert.Equal(t, short, s.LockDelayLength(), "the record came down once the long locks were over")
}

// TestStoreSettle: the recorded max TTL comes down to the current MaxTTL only once the
// lock-delay has run out, and a shorter MaxTTL never shortens a pending delay.
func TestStoreSettle(t *testing.T) {
	dir := t.TempDir()
	st, err := openStore(dir, time.Minute)
	require.NoError(t, err)
	require.NoError(t, st.close()) // a crash

	st, err = openStore(dir, time.Second)
	require.NoError(t, err)
	require.True(t, st.lockDelay)
	require.Equal(t, time.Minute, st.delay)
	require.NoError(t, st.markClean(false)) // the delay has not run out: the record stays
	require.NoError(t, st.close())

	st, err = openStore(dir, time.Second)
	require.NoError(t, err)
	require.False(t, st.lockDelay, "clean stop, no lock")
	require.Zero(t, st.delay)
	require.Equal(t, time.Second, st.st.maxTTL, "no earlier lock can be alive: the record is today's MaxTTL")
	require.NoError(t, st.close()) // a crash

	st, err = openStore(dir, 2*time.Second)
	require.NoError(t, err)
	require.Equal(t, 2*time.Second, st.delay, "the longer of the record and today's MaxTTL")
	st.opened = st.opened.Add(-3 * time.Second) // the delay has run out
	require.NoError(t, st.markClean(true))
	require.NoError(t, st.close())

	st, err = openStore(dir, 500*time.Millisecond)
	require.NoError(t, err)
	defer st.close()
	assert.Equal(t, 2*time.Second, st.delay, "locks of the last boot had TTLs up to its MaxTTL")
}

// TestStoreStateLostRefusesStart: the state file deleted and the lock file kept (issue 9,
// item 8: the server started with fence 1): New refuses with ErrStateLost; with the lock
// file deleted too (the documented recovery), it starts with fences above the wall clock
// and every earlier fence.
func TestStoreStateLostRefusesStart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, testConfig(t, dir))
	c := newClient(t, s.Addr())
	c.connect("a")
	_, f := c.lock("k", time.Second)
	requireOp(t, f, wire.OpOK, "LOCK")
	last := f.Fence
	require.NoError(t, s.Abort())

	require.NoError(t, os.Remove(filepath.Join(dir, stateFile)))
	s2, err := New(testConfig(t, dir))
	if s2 != nil {
		s2.Close()
	}
	require.ErrorIs(t, err, ErrStateLost)
	assert.Contains(t, err.Error(), filepath.Join(dir, lockFile), "the error names the recovery")
	_, err = os.Stat(filepath.Join(dir, stateFile))
	require.ErrorIs(t, err, os.ErrNotExist, "a refused start writes no state")

	require.NoError(t, os.Remove(filepath.Join(dir, lockFile)))
	wall := uint64(time.Now().UnixNano())
	s = startServer(t, testConfig(t, dir))
	defer s.Close()
	assert.False(t, s.LockDelay(), "a new directory has no lock-delay")
	c = newClient(t, s.Addr())
	c.connect("b")
	_, f = c.lock("k2", time.Second)
	requireOp(t, f, wire.OpOK, "LOCK after the recovery")
	assert.Greater(t, f.Fence, last)
	assert.GreaterOrEqual(t, f.Fence, wall, "fences of a new directory start at the wall clock")
}

// TestStoreFreshDirFencesAboveEarlierIncarnation: a data directory lost as a whole (a
// /tmp cleaner, another $HOME, the README's -data "$(mktemp -d)"): the new one's fences
// are above the old one's, though nothing of the old one is left.
func TestStoreFreshDirFencesAboveEarlierIncarnation(t *testing.T) {
	var last uint64
	for round := 0; round < 3; round++ {
		s := startServer(t, testConfig(t, t.TempDir()))
		require.False(t, s.LockDelay(), "a fresh directory: no lock-delay (docs/DURABILITY.md)")
		c := newClient(t, s.Addr())
		c.connect("x")
		for i := 0; i < 3; i++ {
			id, f := c.lock("k", time.Second)
			requireOp(t, f, wire.OpOK, "LOCK")
			require.Greater(t, f.Fence, last, "round %d", round)
			last = f.Fence
			c.unlock("k", id)
		}
		require.NoError(t, s.Abort())
	}
}

// TestStoreRestoredOldStateNoBackwards: an old copy of the state file put back (a
// backup, a snapshot): fences still go up, from the wall clock.
func TestStoreRestoredOldStateNoBackwards(t *testing.T) {
	dir := t.TempDir()
	fence := func() uint64 {
		s := startServer(t, testConfig(t, dir))
		defer s.Close()
		c := newClient(t, s.Addr())
		c.connect("x")
		id, f := c.lock("k", time.Second)
		requireOp(t, f, wire.OpOK, "LOCK")
		c.unlock("k", id)
		return f.Fence
	}
	f1 := fence()
	old, err := os.ReadFile(filepath.Join(dir, stateFile))
	require.NoError(t, err)
	f2 := fence()
	require.Greater(t, f2, f1)
	require.NoError(t, os.WriteFile(filepath.Join(dir, stateFile), old, 0o600))
	assert.Greater(t, fence(), f2, "after the old state file was restored")
}

// TestStoreStateFormat: the state file round-trips, a version 1 file is still read, and
// damage is refused.
func TestStoreStateFormat(t *testing.T) {
	st := state{boot: 7, fenceHW: 1 << 60, clean: true, locksHeld: true, maxTTL: 90 * time.Second}
	b := st.encode()
	require.Len(t, b, stateSize)
	got, err := decodeState(b)
	require.NoError(t, err)
	assert.Equal(t, st, got)

	v1 := []byte("NMXS\x01\x01\x00\x00")
	v1 = append(v1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0x10, 0)
	v1 = append(v1, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(v1[20:], crc32.Checksum(v1[:20], castagnoli))
	got, err = decodeState(v1)
	require.NoError(t, err)
	assert.Equal(t, state{boot: 3, fenceHW: 0x1000, clean: true}, got, "version 1: no max TTL")

	bad := append([]byte(nil), b...)
	bad[20] ^= 1
	_, err = decodeState(bad)
	assert.ErrorIs(t, err, ErrCorruptState, "flipped bit")
	_, err = decodeState(b[:stateSize-1])
	assert.ErrorIs(t, err, ErrCorruptState, "short")
	v9 := append([]byte(nil), b...)
	v9[4] = 9
	_, err = decodeState(v9)
	assert.ErrorIs(t, err, ErrStateVersion)
}

// countingHandler counts log records by level, and keeps their messages.
type countingHandler struct {
	mu   sync.Mutex
	msgs map[slog.Level][]string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.msgs == nil {
		h.msgs = make(map[slog.Level][]string)
	}
	h.msgs[r.Level] = append(h.msgs[r.Level], r.Message)
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func (h *countingHandler) count(level slog.Level, substr string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs[level] {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// TestStoreFullDisk: the state file cannot be written (an injected ENOSPC). Grants go on
// from the fences already durable, then LOCK is refused with LOCK_DELAY, the failure is
// logged once (issue 9, item 8: 5,800 ERROR lines a second), the write is retried at a
// bounded rate, and grants resume, logged once, when space returns.
func TestStoreFullDisk(t *testing.T) {
	h := &countingHandler{}
	cfg := testConfig(t, t.TempDir())
	cfg.Logger = slog.New(h)
	s, err := newServer(cfg)
	require.NoError(t, err)
	var full atomic.Bool
	var writes atomic.Int64
	full.Store(true)
	s.store.writeFile = func(dir string, b []byte) error {
		writes.Add(1)
		if full.Load() {
			return syscall.ENOSPC
		}
		return writeStateFile(dir, b)
	}
	s.store.block = 8
	// Three durable fences left: the rest of the block is spent.
	s.m.fenceEnd = s.m.NextFence() + 3
	s.store.st.fenceHW = s.m.fenceEnd
	go s.loop()
	defer s.Close()

	c := newClient(t, s.Addr())
	c.connect("a")
	var fences []uint64
	for i := 0; i < 3; i++ {
		id, f := c.lock("k", time.Second)
		requireOp(t, f, wire.OpOK, "LOCK with durable fences left")
		fences = append(fences, f.Fence)
		c.unlock("k", id)
	}
	start, refused := time.Now(), 0
	for time.Since(start) < 600*time.Millisecond {
		_, f := c.lock("k", time.Second)
		require.Equal(t, wire.CodeLockDelay, f.Code, "LOCK with the disk full: %+v", f)
		refused++
	}
	t.Logf("%d LOCKs refused in %v, %d writes tried", refused, time.Since(start), writes.Load())
	assert.Greater(t, refused, 50)
	assert.LessOrEqual(t, writes.Load(), int64(10), "writes retried at most every 100ms")
	assert.Equal(t, 1, h.count(slog.LevelError, ""), "the failure is logged once")
	requireOp(t, c.touch(), wire.OpPong, "the session is served meanwhile")

	full.Store(false)
	took, f := lockUntilGranted(t, c, "k", time.Now(), 2*time.Second)
	assert.Less(t, took, time.Second, "grants resume soon after space returns")
	assert.Greater(t, f.Fence, fences[2])
	assert.Equal(t, 1, h.count(slog.LevelWarn, "works again"), "the recovery is logged once")
	assert.Equal(t, 1, h.count(slog.LevelError, ""), "no more errors")
}
