package server

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// TestServerUnlockAllForbidden: UNLOCKALL is an operator's act: with keys only under a
// key marked admin, without keys only from loopback; anyone else gets FORBIDDEN and no
// lock moves. Issue 9: UNLOCKALL from any fresh session released every lock.
func TestServerUnlockAllForbidden(t *testing.T) {
	unlockAll := func(c *client) wire.Frame {
		id := c.id()
		return c.call(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpUnlockAll, id) })
	}
	t.Run("keys", func(t *testing.T) {
		ring := testRing(t)
		s := startServer(t, sealedConfig(t, ring))
		defer s.Close()
		user, admin := newSealedClient(t, s.Addr(), ring, 1), newSealedClient(t, s.Addr(), ring, 2)
		user.connect("user")
		admin.connect("admin")
		_, f := user.lock("k", 10*time.Second)
		requireOp(t, f, wire.OpOK, "LOCK")
		f = unlockAll(user)
		requireOp(t, f, wire.OpError, "UNLOCKALL under a key not marked admin")
		assert.Equal(t, wire.CodeForbidden, f.Code)
		requireOp(t, admin.lockFrame("k", time.Second), wire.OpLocked, "the lock stayed")
		requireOp(t, unlockAll(admin), wire.OpPong, "UNLOCKALL under the admin key")
		requireOp(t, admin.lockFrame("k", time.Second), wire.OpOK, "released")
	})
	t.Run("not loopback", func(t *testing.T) {
		fs := startFakeServer(t, 1) // its client is 192.0.2.1
		// The session of 192.0.2.1 holds "k" and tries UNLOCKALL.
		fs.c.push(fs.from, fs.lockOnly("k"))
		var f wire.Frame
		r := fs.reply()
		require.True(t, r.Next(&f))
		require.Equal(t, wire.OpOK, f.Op)
		id := fs.nextID
		fs.nextID++
		b := wire.BeginDatagram(nil, wire.Header{Session: fs.session})
		fs.c.push(fs.from, wire.FinishDatagram(wire.AppendEmpty(b, wire.OpUnlockAll, id)))
		r = fs.reply()
		require.True(t, r.Next(&f))
		require.Equal(t, wire.OpError, f.Op, "UNLOCKALL from 192.0.2.1: %+v", f)
		assert.Equal(t, wire.CodeForbidden, f.Code)
	})
	t.Run("loopback", func(t *testing.T) {
		s := startServer(t, testConfig(t, t.TempDir()))
		defer s.Close()
		c := newClient(t, s.Addr())
		c.connect("c")
		requireOp(t, unlockAll(c), wire.OpPong, "UNLOCKALL from loopback")
	})
}
