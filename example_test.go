package netmutex_test

import (
	"context"
	"errors"
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

// The context forms: deadlines and cancellation come from the context, and the attempts
// within it are paced by Options.Retries and Options.Timeout.
func Example_contextForms() {
	addr, stop := startExampleServer()
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nm, err := netmutex.OpenContext(ctx, []string{addr}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nm.CloseContext(ctx)

	var l netmutex.Lock
	if err := nm.LockContext(ctx, &l, "report:2026-11", time.Minute); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("locked", l.Key(), "fence > 0:", l.FenceID() > 0)
	if err := nm.UpdateContext(ctx, &l, time.Minute); err != nil {
		fmt.Println(err)
		return
	}
	if err := nm.UnlockContext(ctx, &l); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("unlocked")
	// Output:
	// locked report:2026-11 fence > 0: true
	// unlocked
}

// Waiting for a busy key: Lock is a try-lock and answers ErrLocked at once; Acquire
// waits in the server's queue and is granted the key the moment its holder lets go.
func Example_busyKey() {
	addr, stop := startExampleServer()
	defer stop()
	ctx := context.Background()
	holder, _ := netmutex.OpenContext(ctx, []string{addr}, nil)
	defer holder.CloseContext(ctx)
	other, _ := netmutex.OpenContext(ctx, []string{addr}, nil)
	defer other.CloseContext(ctx)

	var held, wanted netmutex.Lock
	_ = holder.LockContext(ctx, &held, "queue:emails", time.Minute)
	err := other.LockContext(ctx, &wanted, "queue:emails", time.Minute)
	fmt.Println("try-lock:", errors.Is(err, netmutex.ErrLocked))

	heldFence := held.FenceID()
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = holder.UnlockContext(ctx, &held)
	}()
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = other.Acquire(waitCtx, &wanted, "queue:emails", time.Minute)
	fmt.Println("acquired:", err == nil, wanted.Key(), wanted.FenceID() > heldFence)
	// Output:
	// try-lock: true
	// acquired: true queue:emails true
}

// A lock whose heartbeat failed must be treated as lost: stop the work it protects.
// ErrIsolated means the server isolated this session (a lock expired); ErrLockLost that
// the server no longer knows the lock (it restarted, or forgot the session).
func Example_lostLock() {
	addr, stop := startExampleServer()
	defer stop()
	ctx := context.Background()
	nm, err := netmutex.OpenContext(ctx, []string{addr}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nm.CloseContext(ctx)

	var l netmutex.Lock
	if err := nm.LockContext(ctx, &l, "job:42", 50*time.Millisecond); err != nil {
		fmt.Println(err)
		return
	}
	time.Sleep(300 * time.Millisecond) // the heartbeat never ran: the lock expired
	err = nm.UpdateContext(ctx, &l, time.Minute)
	switch {
	case errors.Is(err, netmutex.ErrIsolated), errors.Is(err, netmutex.ErrLockLost):
		fmt.Println("lost the lock: stop working on job:42")
	case err != nil:
		fmt.Println("could not renew, the lock may still be held:", err)
	}
	fmt.Println("held:", l.Key() != "")
	// Output:
	// lost the lock: stop working on job:42
	// held: false
}
