package server

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// TestServerPushedGrant: over real UDP, a waiting LOCK is answered QUEUED (no larger than
// itself), and when the holder unlocks, the waiter gets its OK unasked: the LOCK's id and
// a fence above the holder's, sealed under its key when the server has keys. A copy of
// the LOCK then gets the same OK; so does a LOCKMANY waiter, with the first key's fence.
func TestServerPushedGrant(t *testing.T) {
	t.Run("plain", func(t *testing.T) { testServerPushedGrant(t, nil) })
	t.Run("sealed", func(t *testing.T) { testServerPushedGrant(t, testRing(t)) })
}

func testServerPushedGrant(t *testing.T, ring *seal.Keyring) {
	cfg := testConfig(t, t.TempDir())
	cfg.Keys = ring
	s := startServer(t, cfg)
	defer s.Close()
	newC := func() *client {
		if ring != nil {
			return newSealedClient(t, s.Addr(), ring, 1)
		}
		return newClient(t, s.Addr())
	}
	a, b, m := newC(), newC(), newC()
	a.connect("a")
	b.connect("b")
	m.connect("m")
	lockID, f := a.lock("k", 10*time.Second)
	requireOp(t, f, wire.OpOK, "holder's LOCK")
	held := f.Fence

	waitID := b.id()
	waitLock := b.datagram(func(d []byte) []byte { return wire.AppendLockWait(d, waitID, 10000, 0, "k") })
	b.send(waitLock)
	_, frames, ok := b.recv(2 * time.Second)
	require.True(t, ok, "no QUEUED")
	require.Len(t, frames, 1)
	requireOp(t, frames[0], wire.OpQueued, "waiting LOCK")
	require.Equal(t, waitID, frames[0].ID)

	manyID := m.id()
	m.send(m.datagram(func(d []byte) []byte {
		return wire.AppendLockMany(d, manyID, 10000, true, 0, []string{"k", "j"})
	}))
	_, frames, ok = m.recv(2 * time.Second)
	require.True(t, ok, "no QUEUED")
	requireOp(t, frames[0], wire.OpQueued, "waiting LOCKMANY")

	requireOp(t, a.unlock("k", lockID), wire.OpOK, "holder's UNLOCK")
	h, frames, ok := b.recv(2 * time.Second)
	require.True(t, ok, "no pushed grant")
	require.Equal(t, b.session, h.Session)
	require.Len(t, frames, 1)
	requireOp(t, frames[0], wire.OpOK, "pushed grant")
	require.Equal(t, waitID, frames[0].ID)
	require.Greater(t, frames[0].Fence, held)
	fence := frames[0].Fence

	b.send(waitLock) // a copy: the same grant
	_, frames, ok = b.recv(2 * time.Second)
	require.True(t, ok)
	requireOp(t, frames[0], wire.OpOK, "copy of the granted LOCK")
	require.Equal(t, fence, frames[0].Fence)

	requireOp(t, b.unlock("k", waitID), wire.OpOK, "waiter's UNLOCK")
	_, frames, ok = m.recv(2 * time.Second)
	require.True(t, ok, "no pushed grant of the LOCKMANY")
	requireOp(t, frames[0], wire.OpOK, "pushed LOCKMANY grant")
	require.Equal(t, manyID, frames[0].ID)
	require.Greater(t, frames[0].Fence, fence)
	st := s.Stats()
	require.Equal(t, uint64(2), st.Pushed)
}
