package netmutex

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/netmutex/netmutex/server"
	"github.com/stretchr/testify/require"
)

// Pacing used by tests: loopback answers in microseconds, so a short attempt keeps
// loss-recovery tests fast while leaving ample margin under -race.
const (
	testRetries = 5
	testTimeout = 500 * time.Millisecond
)

// startServer runs a real server on 127.0.0.1:0 with a fresh data directory; tweak
// adjusts the configuration. The server stops when the test ends.
func startServer(t testing.TB, tweak func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := server.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { srv.Close() })
	return srv
}

// openClient connects to srv; the connection is closed when the test ends.
func openClient(t testing.TB, srv *server.Server, opts *Options) *NetMutex {
	t.Helper()
	nm, err := Open(testRetries, testTimeout, []string{srv.Addr().String()}, opts)
	require.NoError(t, err)
	t.Cleanup(func() { nm.Close(1, testTimeout) })
	return nm
}
