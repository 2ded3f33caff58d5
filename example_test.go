package netmutex_test

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/server"
)

// startExampleServer stands in for `netmutexd`: the example needs a server to talk to.
func startExampleServer() (addr string, stop func()) {
	dir, err := os.MkdirTemp("", "netmutex-example")
	if err != nil {
		panic(err)
	}
	cfg := server.DefaultConfig()
	cfg.ListenAddr = "127.0.0.1:0"
	cfg.DataDir = dir
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(cfg)
	if err != nil {
		panic(err)
	}
	return srv.Addr().String(), func() { srv.Close(); os.RemoveAll(dir) }
}

// The original netmutex README example: connect, lock a key, keep it alive with
// heartbeats while working under it, unlock, close. Against a netmutexd started with no
// flags, addresses would be []string{"127.0.0.1:15663"}.
func Example() {
	addr, stop := startExampleServer()
	defer stop()

	retries := 10
	timeout := 60 * time.Second
	addresses := []string{addr}

	hostname, err := os.Hostname()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}

	options := &netmutex.Options{
		// information about client restart or host remote reboot
		IsolationInfo: fmt.Sprintf("Hostname: %s\nPid: %d", hostname, os.Getpid()),
	}

	// Open connection to a lock-server
	nm, err := netmutex.Open(retries, timeout, addresses, options)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}

	lock := &netmutex.Lock{}
	key := "ObjectID:123456"
	ttl := time.Minute

	// Try to lock key
	err = nm.Lock(retries, timeout, lock, key, ttl)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}

	done := make(chan struct{})
	stopped := make(chan struct{})

	// run heartbeat in background
	go func() {
		defer close(stopped)
		heartbeatTimeout := 6 * time.Second // much less than `ttl`
		heartbeatRetries := 1
		for {
			// Try to update lock TTL
			err := nm.Update(heartbeatRetries, timeout, lock, ttl)
			if err == netmutex.ErrDisconnected || err == netmutex.ErrWrongTTL || err == netmutex.ErrNoServers {
				return
			} else if err == netmutex.ErrIsolated {
				os.Exit(1)
			} else if err == netmutex.ErrTooMuchRetries {
				continue
			} else if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return
			}
			select {
			case <-done:
				return
			case <-time.After(heartbeatTimeout):
			}
		}
	}()

	// do something under the lock
	fmt.Println("locked", lock.Key())

	// stop heartbeat
	close(done)
	<-stopped

	// Try to unlock lock
	err = nm.Unlock(retries, timeout, lock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}

	// Close connection
	err = nm.Close(retries, timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Println("unlocked")
	// Output:
	// locked ObjectID:123456
	// unlocked
}
