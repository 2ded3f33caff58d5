package tests

import (
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/faultproxy"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// openFDs lists this process's open file descriptors (Linux), or nil.
func openFDs() map[string]string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	fds := map[string]string{}
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		fds[e.Name()] = target
	}
	return fds
}

// TestNoLeakAfterClose runs a server, a lossy proxy and several clients with locks held,
// then closes everything (the server once cleanly, once as a crash; each with keys and
// without) and checks that no goroutine and no socket or file is left behind.
func TestNoLeakAfterClose(t *testing.T) {
	for _, tc := range []struct {
		crash, keys bool
	}{{false, true}, {true, true}, {false, false}, {true, false}} {
		crash := tc.crash
		name := "Close"
		if crash {
			name = "Abort"
		}
		if tc.keys {
			name += "/keys"
		} else {
			name += "/plain"
		}
		t.Run(name, func(t *testing.T) {
			before := openFDs()
			if before == nil {
				t.Skip("no /proc/self/fd")
			}
			cfg := server.DefaultConfig()
			cfg.ListenAddr = "127.0.0.1:0"
			cfg.DataDir = t.TempDir()
			cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			var opts *netmutex.Options
			if tc.keys {
				keyFile := newKeyFile(t)
				keys, err := seal.LoadKeyFile(keyFile)
				require.NoError(t, err)
				cfg.Keys, cfg.KeyFile = keys, keyFile
				opts = &netmutex.Options{KeyFile: keyFile}
			}
			srv, err := server.New(cfg)
			require.NoError(t, err)
			lossy := faultproxy.Faults{Drop: 0.2, Duplicate: 0.1, Delay: 0.2, MaxDelay: 50 * time.Millisecond}
			px, err := faultproxy.New(faultproxy.Config{Upstream: srv.Addr().String(), ToServer: lossy, ToClient: lossy, Logf: t.Logf})
			require.NoError(t, err)
			var clients []*netmutex.NetMutex
			for i := 0; i < 4; i++ {
				nm, err := netmutex.Open(20, 50*time.Millisecond, []string{px.Addr().String()}, opts)
				require.NoError(t, err)
				clients = append(clients, nm)
				var l netmutex.Lock
				require.NoError(t, nm.Lock(20, 50*time.Millisecond, &l, "k"+string(rune('a'+i)), time.Minute))
			}
			for _, nm := range clients {
				nm.Close(2, 50*time.Millisecond) // may time out through the proxy: it must still free everything
			}
			require.NoError(t, px.Close())
			if crash {
				err = srv.Abort()
			} else {
				err = srv.Close()
			}
			require.NoError(t, err)
			goleak.VerifyNone(t)
			var after map[string]string
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if after = openFDs(); len(after) <= len(before) {
					break
				}
			}
			leaked := map[string]string{} // fd -> what it points to
			for fd, target := range after {
				if _, ok := before[fd]; !ok {
					leaked[fd] = target
				}
			}
			assert.Empty(t, leaked, "file descriptors left open")
		})
	}
}
