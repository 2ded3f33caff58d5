package load

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/server"
)

// Netmutex is the system under test: an embedded server on loopback (or an external
// one at -addr) and -conns NetMutex instances.
type Netmutex struct {
	srv      *server.Server // nil with an external server
	dataDir  string
	addr     string
	nms      []*netmutex.NetMutex
	ttl      time.Duration
	keyFile  string
	tempKey  bool // keyFile is ours to remove
	spinWait time.Duration
}

// openTimeout bounds Open: generous, the server is on this machine.
const (
	openRetries = 10
	openTimeout = 500 * time.Millisecond
)

// StartNetmutex starts an embedded server unless o.Addr is set, and opens o.Conns
// NetMutex instances to it, sealing with o's keys if any.
func StartNetmutex(o *Options) (*Netmutex, error) {
	addr, conns, ttl := o.Addr, o.Conns, o.TTL
	s := &Netmutex{addr: addr, ttl: ttl, keyFile: o.KeyFile, spinWait: o.SpinWait}
	if o.Sealed {
		f, err := os.CreateTemp("", "netmutex-bench-key-")
		if err != nil {
			return nil, err
		}
		secret := make([]byte, seal.KeySize)
		rand.Read(secret)
		fmt.Fprintf(f, "1 %x\n", secret)
		f.Close()
		s.keyFile, s.tempKey = f.Name(), true
	}
	var keys *seal.Keyring
	if s.keyFile != "" {
		var err error
		if keys, err = seal.LoadKeyFile(s.keyFile); err != nil {
			s.Close()
			return nil, err
		}
	}
	if addr == "" {
		dir, err := os.MkdirTemp("", "netmutex-bench-")
		if err != nil {
			return nil, err
		}
		s.dataDir = dir
		cfg := server.DefaultConfig()
		cfg.ListenAddr = "127.0.0.1:0"
		cfg.DataDir = dir
		cfg.MaxTTL = max(cfg.MaxTTL, ttl)
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg.Keys = keys
		cfg.SpinWait = o.SpinWait
		srv, err := server.New(cfg)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("netmutex: embedded server: %w", err)
		}
		s.srv = srv
		s.addr = srv.Addr().String()
	}
	for range max(conns, 1) {
		nm, err := netmutex.Open(openRetries, openTimeout, []string{s.addr}, &netmutex.Options{KeyFile: s.keyFile, SpinWait: s.spinWait})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("netmutex: open %s: %w", s.addr, err)
		}
		s.nms = append(s.nms, nm)
	}
	return s, nil
}

// Name is "netmutex".
func (s *Netmutex) Name() string { return "netmutex" }

// Note says how it was set up.
func (s *Netmutex) Note() string {
	sealed := ""
	if s.keyFile != "" {
		sealed = ", sealed datagrams"
	}
	if s.spinWait > 0 {
		sealed += fmt.Sprintf(", SpinWait %v", s.spinWait)
	}
	if s.srv == nil {
		return fmt.Sprintf("external server %s, %d NetMutex%s", s.addr, len(s.nms), sealed)
	}
	return fmt.Sprintf("embedded server on %s (default config), %d NetMutex, default Options%s", s.addr, len(s.nms), sealed)
}

// NewLocker returns goroutine g's locker, on NetMutex g % conns.
func (s *Netmutex) NewLocker(g int) (Locker, error) {
	return &netmutexLocker{nm: s.nms[g%len(s.nms)], ttl: s.ttl}, nil
}

// Transport returns the client's counters, and the embedded server's.
func (s *Netmutex) Transport() Transport {
	var t Transport
	for _, nm := range s.nms {
		st := nm.Stats()
		t.FramesOut += st.FramesOut
		t.DatagramsOut += st.DatagramsOut
		t.SendCalls += st.SendCalls
		t.FramesIn += st.FramesIn
		t.DatagramsIn += st.DatagramsIn
		t.RecvCalls += st.RecvCalls
	}
	if s.srv != nil {
		st := s.srv.Stats()
		t.Requests, t.DatagramsInSrv, t.SyscallsIn = st.Requests, st.Datagrams, st.SyscallsIn
		t.Replies, t.DatagramsOutSrv, t.SyscallsOut = st.Replies, st.DatagramsOut, st.SyscallsOut
		t.HasServer = true
	}
	return t
}

// Close closes the NetMutex instances and the embedded server, and removes its files.
func (s *Netmutex) Close() error {
	var errs []error
	for _, nm := range s.nms {
		if err := nm.Close(3, openTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if s.srv != nil {
		errs = append(errs, s.srv.Close())
	}
	if s.dataDir != "" {
		errs = append(errs, os.RemoveAll(s.dataDir))
	}
	if s.tempKey {
		errs = append(errs, os.Remove(s.keyFile))
	}
	return errors.Join(errs...)
}

// netmutexLocker uses the context forms with the NetMutex's default pacing.
type netmutexLocker struct {
	nm  *netmutex.NetMutex
	ttl time.Duration
	l   netmutex.Lock
}

func (n *netmutexLocker) Lock(ctx context.Context, key string) (bool, error) {
	err := n.nm.LockContext(ctx, &n.l, key, n.ttl)
	if err == netmutex.ErrLocked {
		return false, nil
	}
	return err == nil, err
}

// Acquire waits in the server's queue (netmutex.Acquire).
func (n *netmutexLocker) Acquire(ctx context.Context, key string) error {
	return n.nm.Acquire(ctx, &n.l, key, n.ttl)
}

func (n *netmutexLocker) Unlock(ctx context.Context) error {
	return n.nm.UnlockContext(ctx, &n.l)
}
