package server

import (
	"testing"
	"time"

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
	if first.Op != wire.OpOK || second.Op != wire.OpOK || first.Fence != second.Fence {
		t.Fatalf("LOCK twice: %+v then %+v", first, second)
	}
	if g := s.Stats().Grants; g != 1 {
		t.Fatalf("%d grants for one LOCK sent twice", g)
	}

	// a unlocks; b takes the key; a's old UNLOCK is replayed: b must keep it.
	unlockID := a.id()
	unlockDgram := a.datagram(func(buf []byte) []byte { return wire.AppendUnlock(buf, unlockID, lockID, "k") })
	if f := a.callRaw(unlockDgram); f.Op != wire.OpOK {
		t.Fatalf("UNLOCK: %+v", f)
	}
	bID, f := b.lock("k", 5*time.Second)
	if f.Op != wire.OpOK || f.Fence <= first.Fence {
		t.Fatalf("b's LOCK: %+v", f)
	}
	if f := a.callRaw(unlockDgram); f.Op != wire.OpOK {
		t.Fatalf("replayed UNLOCK: %+v", f)
	}
	// The replayed LOCK of a, released since, must not take the key back either.
	if f := a.callRaw(lockDgram); f.Op == wire.OpOK {
		t.Fatalf("replayed LOCK after release granted: %+v", f)
	}
	upID := b.id()
	if f := b.call(func(buf []byte) []byte { return wire.AppendUpdate(buf, upID, bID, 5000, "k") }); f.Op != wire.OpOK {
		t.Fatalf("b lost the key to a replay: %+v", f)
	}
}

// callRaw sends a prepared datagram and returns the one reply frame.
func (c *client) callRaw(d []byte) wire.Frame {
	c.t.Helper()
	c.send(d)
	_, frames, ok := c.recv(2 * time.Second)
	if !ok || len(frames) != 1 {
		c.t.Fatalf("reply: ok=%v frames=%d", ok, len(frames))
	}
	return frames[0]
}
