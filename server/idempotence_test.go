package server

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// TestServerWireIdempotence replays whole datagrams over UDP, as a network that
// duplicates and delays would.
func TestServerWireIdempotence(t *testing.T) {
	s := startServer(t, testConfig(t, t.TempDir()))
	defer s.Close()
	a, b := newClient(t, s.Addr()), newClient(t, s.Addr())
	a.connect("a")
	b.connect("b")

	// The same LOCK datagram twice: one grant, the same fence both times.
	lockID := a.id()
	lockDgram := a.datagram(func(buf []byte) []byte { return wire.AppendLock(buf, lockID, 5000, "k") })
	first := a.callRaw(lockDgram)
	second := a.callRaw(lockDgram)
	requireOp(t, first, wire.OpOK, "LOCK")
	requireOp(t, second, wire.OpOK, "the same LOCK again")
	require.Equal(t, first.Fence, second.Fence, "fence of the same LOCK twice")
	require.Equal(t, uint64(1), s.Stats().Grants, "grants for one LOCK sent twice")

	// a unlocks; b takes the key; a's old UNLOCK is replayed: b must keep it.
	unlockID := a.id()
	unlockDgram := a.datagram(func(buf []byte) []byte { return wire.AppendUnlock(buf, unlockID, lockID, "k") })
	requireOp(t, a.callRaw(unlockDgram), wire.OpOK, "UNLOCK")
	bID, f := b.lock("k", 5*time.Second)
	requireOp(t, f, wire.OpOK, "b's LOCK")
	require.Greater(t, f.Fence, first.Fence, "b's fence")
	requireOp(t, a.callRaw(unlockDgram), wire.OpOK, "replayed UNLOCK")
	// The replayed LOCK of a, released since, must not take the key back either.
	f = a.callRaw(lockDgram)
	require.NotEqual(t, wire.OpOK, f.Op, "replayed LOCK after release granted: %+v", f)
	upID := b.id()
	f = b.call(func(buf []byte) []byte { return wire.AppendUpdate(buf, upID, bID, 5000, "k") })
	requireOp(t, f, wire.OpOK, "b's UPDATE (b lost the key to a replay?)")
}

// callRaw sends a prepared datagram and returns the one reply frame.
func (c *client) callRaw(d []byte) wire.Frame {
	c.t.Helper()
	c.send(d)
	_, frames, ok := c.recv(2 * time.Second)
	require.True(c.t, ok, "no reply")
	require.Len(c.t, frames, 1, "reply frames")
	return frames[0]
}
