package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/netmutex/netmutex/bench/load"
	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdSystem is an etcd server embedded in this process (go.etcd.io/etcd/server/v3/embed)
// at its defaults, fsync on unless asked otherwise, reached over loopback gRPC by
// clientv3, with concurrency.Mutex as the lock.
//
// Each goroutine has its own concurrency.Session (its own lease). An etcd Mutex's
// identity is its session's lease: two goroutines on one session would both "hold" the
// same key, so per-goroutine sessions are what mutual exclusion between goroutines
// requires, the same as each netmutex goroutine having its own Lock. A session costs one
// lease grant at set-up and a keep-alive every TTL/3 on the client's shared stream.
type etcdSystem struct {
	e       *embed.Etcd
	dir     string
	clients []*clientv3.Client
	fsync   bool
	ttlSec  int
	prefix  string
	endp    string

	sessions []*concurrency.Session
}

const etcdStartTimeout = 30 * time.Second

func startEtcd(conns int, ttl time.Duration, fsync bool) (*etcdSystem, error) {
	dir, err := os.MkdirTemp("", "netmutex-bench-etcd-")
	if err != nil {
		return nil, err
	}
	s := &etcdSystem{dir: dir, fsync: fsync, ttlSec: max(int((ttl+time.Second-1)/time.Second), 1), prefix: "/bench/" + load.RunID() + "/"}
	var lastErr error
	for range 3 { // a free port can be taken before etcd binds it
		if lastErr = s.startServer(); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		os.RemoveAll(dir)
		return nil, lastErr
	}
	for range conns {
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{s.endp},
			DialTimeout: 5 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("etcd client: %w", err)
		}
		s.clients = append(s.clients, c)
	}
	return s, nil
}

func (s *etcdSystem) startServer() error {
	cport, err := freePort()
	if err != nil {
		return err
	}
	pport, err := freePort()
	if err != nil {
		return err
	}
	os.RemoveAll(s.dir + "/data")
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = s.dir + "/data"
	cu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(cport)}
	pu := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(pport)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = !s.fsync
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd: %w", err)
	case <-time.After(etcdStartTimeout):
		e.Server.Stop()
		e.Close()
		return fmt.Errorf("etcd: not ready after %v", etcdStartTimeout)
	}
	s.e, s.endp = e, cu.Host
	return nil
}

func (s *etcdSystem) Name() string { return "etcd" }

func (s *etcdSystem) Note() string {
	fs := "fsync ON (the default)"
	if !s.fsync {
		fs = "fsync OFF (UnsafeNoFsync)"
	}
	return fmt.Sprintf("embedded etcd %s on %s, %s, otherwise defaults; %d clientv3 client(s), one concurrency.Session (TTL %ds) per goroutine, Mutex.TryLock/Unlock (Mutex.Lock when contended)",
		etcdVersion(), s.endp, fs, len(s.clients), s.ttlSec)
}

func (s *etcdSystem) NewLocker(g int) (load.Locker, error) {
	c := s.clients[g%len(s.clients)]
	sess, err := concurrency.NewSession(c, concurrency.WithTTL(s.ttlSec))
	if err != nil {
		return nil, err
	}
	s.sessions = append(s.sessions, sess)
	return &etcdLocker{s: s, sess: sess, mus: make(map[string]*concurrency.Mutex)}, nil
}

func (s *etcdSystem) Close() error {
	var errs []error
	for _, sess := range s.sessions {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		sess.Orphan()
		s.clients[0].Revoke(ctx, sess.Lease())
		cancel()
	}
	for _, c := range s.clients {
		errs = append(errs, c.Close())
	}
	if s.e != nil {
		s.e.Close()
	}
	errs = append(errs, os.RemoveAll(s.dir))
	return errors.Join(errs...)
}

// etcdLocker keeps one Mutex per key it has used: a Mutex is reusable after Unlock.
type etcdLocker struct {
	s    *etcdSystem
	sess *concurrency.Session
	mus  map[string]*concurrency.Mutex
	held *concurrency.Mutex
}

func (l *etcdLocker) Lock(ctx context.Context, key string) (bool, error) {
	m := l.mus[key]
	if m == nil {
		m = concurrency.NewMutex(l.sess, l.s.prefix+key)
		l.mus[key] = m
	}
	err := m.TryLock(ctx)
	if err == concurrency.ErrLocked {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	l.held = m
	return true, nil
}

// Acquire is etcd's waiting lock, concurrency.Mutex.Lock: the contended mode's peer of
// netmutex's Acquire.
func (l *etcdLocker) Acquire(ctx context.Context, key string) error {
	m := l.mus[key]
	if m == nil {
		m = concurrency.NewMutex(l.sess, l.s.prefix+key)
		l.mus[key] = m
	}
	if err := m.Lock(ctx); err != nil {
		return err
	}
	l.held = m
	return nil
}

func (l *etcdLocker) Unlock(ctx context.Context) error {
	return l.held.Unlock(ctx)
}

func etcdVersion() string { return version.Version }
