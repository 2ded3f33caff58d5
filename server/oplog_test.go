package server

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// syncBuffer is a bytes.Buffer safe for the server's goroutines and the test's.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestOperatorLogs: a start says how the previous boot stopped, a lock-delay is logged
// with its length and at its end, an isolation without a command is logged, and with a
// debug logger sessions opened and closed are.
func TestOperatorLogs(t *testing.T) {
	dir := t.TempDir()
	var buf syncBuffer
	cfg := testConfig(t, dir)
	cfg.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.MaxTTL = 300 * time.Millisecond
	s := startServer(t, cfg)
	assert.Contains(t, buf.String(), `previous_stop="none: new data directory"`)
	c := newClient(t, s.Addr())
	c.connect("x")
	require.Eventually(t, func() bool { return strings.Contains(buf.String(), `msg="session connected"`) },
		5*time.Second, time.Millisecond)
	_, f := c.lock("k", 100*time.Millisecond)
	requireOp(t, f, wire.OpOK, "lock")
	// Kept alive past the TTL: the session is isolated, without a command.
	require.Eventually(t, func() bool {
		c.touch()
		return strings.Contains(buf.String(), "sessions isolated")
	}, 5*time.Second, 20*time.Millisecond)
	d := newClient(t, s.Addr()) // an isolated session's DISCONNECT is answered ISOLATED
	d.connect("d")
	requireOp(t, d.call(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpDisconnect, d.id()) }),
		wire.OpDisconnected, "DISCONNECT")
	require.Eventually(t, func() bool { return strings.Contains(buf.String(), `msg="session disconnected"`) },
		5*time.Second, time.Millisecond)
	require.NoError(t, s.Close())
	s = startServer(t, cfg)
	assert.Contains(t, buf.String(), `previous_stop=clean`)
	require.NoError(t, s.Abort())

	buf.mu.Lock()
	buf.b.Reset()
	buf.mu.Unlock()
	s = startServer(t, cfg)
	defer s.Close()
	assert.Contains(t, buf.String(), `previous_stop="unclean: crash or kill"`)
	assert.Contains(t, buf.String(), `msg="lock-delay: no lock is granted`)
	assert.Contains(t, buf.String(), `for=300ms`)
	require.Eventually(t, func() bool { return strings.Contains(buf.String(), `msg="lock-delay over`) },
		5*time.Second, 10*time.Millisecond, "logged at its end, without traffic")
}
