// Command original is the original netmutex client's README example, run against this
// client: it locks a key on a netmutexd started with no flags (127.0.0.1:15663), keeps
// the lock alive with heartbeats, unlocks it and closes. bash scripts/example.sh builds
// and runs it against a netmutexd it starts and stops.
//
// Changed from the original, and why (nothing else was):
//
//  1. "package main" added: the original README's snippet had no package clause.
//  2. In the heartbeat goroutine, "err = nm.Update(...)" became "err := nm.Update(...)":
//     the goroutine assigned main's err while main assigned it too, a data race (the
//     race detector reports it in about one run in fifteen). The goroutine now has its
//     own err.
//  3. Open waits openTimeout (1 s) for each of its 10 attempts instead of timeout
//     (60 s): with no server answering, the original waited 10 minutes before giving up.
//  4. Every error in main exits with status 1 (the original returned: status 0); when
//     no server answers Open, a second line says how to start one ("errors" is imported
//     for that test). A run with no server fails loudly within about 10 s.
//  5. The comment "Cloce connection" reads "Close connection" (a typo).
//  6. "unlocked and closed" is printed at the end, the only line printed on success, so
//     that a script can see the example ran to its end (.ci/run and scripts/example.sh
//     check for it).
//
// Kept as in the original: the heartbeat is told to stop by a flag that it reads only
// between Updates, so its first Update may still be under way when main unlocks. Calls
// on one Lock are serialised, so that is safe; an Update that comes after the Unlock
// returns ErrNotLocked (printed on stderr), or ErrDisconnected after the Close.
package main

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex"
)

func main() {
	retries := 10
	timeout := 60 * time.Second
	addresses := []string{
		"127.0.0.1:15663",
	}

	hostname, err := os.Hostname()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	options := &netmutex.Options{
		// information about client restart or host remote reboot
		IsolationInfo: fmt.Sprintf("Hostname: %s\nPid: %d", hostname, os.Getpid()),
	}

	// Open connection to a lock-server
	openTimeout := time.Second
	nm, err := netmutex.Open(retries, openTimeout, addresses, options)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if errors.Is(err, netmutex.ErrNoServers) {
			fmt.Fprintln(os.Stderr, "is netmutexd running? go run ./cmd/netmutexd starts one on", addresses[0])
		}
		os.Exit(1)
	}

	lock := &netmutex.Lock{}
	key := "ObjectID:123456"
	ttl := time.Minute

	// Try to lock key
	err = nm.Lock(retries, timeout, lock, key, ttl)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	var done uint32

	// run heartbeat in background
	go func() {
		heartbeatTimeout := 6 * time.Second // much less than `ttl`
		heartbeatRetries := 1

		for atomic.LoadUint32(&done) == 0 {
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

			time.Sleep(heartbeatTimeout)
		}
	}()

	// do something under the lock

	// stop heartbeat
	atomic.StoreUint32(&done, 1)

	// Try to unlock lock
	err = nm.Unlock(retries, timeout, lock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	// Close connection
	err = nm.Close(retries, timeout)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("unlocked and closed")
}
