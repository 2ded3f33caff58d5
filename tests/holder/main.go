// Command holder is a lock holder for the tests of package tests: it takes a lock,
// then heartbeats it, announcing on standard output each write it would make to the
// fenced resource, so that the test (its parent) can stop it with SIGSTOP, resume it
// with SIGCONT and see what it does next.
//
//	holder -addr 127.0.0.1:15663 -key k -ttl 300ms -beat 50ms
//
// Output, one event a line:
//
//	locked <fence>
//	write <fence> <n>         before every heartbeat
//	updated                   a heartbeat succeeded
//	update-error <error>      a heartbeat failed; one more write follows, then it exits
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/netmutex/netmutex"
)

func main() {
	addr := flag.String("addr", "", "server address")
	key := flag.String("key", "k", "key to lock")
	ttl := flag.Duration("ttl", 300*time.Millisecond, "lock TTL")
	beat := flag.Duration("beat", 50*time.Millisecond, "heartbeat period")
	info := flag.String("info", "holder", "IsolationInfo")
	flag.Parse()
	nm, err := netmutex.Open(10, 100*time.Millisecond, []string{*addr}, &netmutex.Options{IsolationInfo: *info})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(1)
	}
	var l netmutex.Lock
	if err := nm.Lock(10, 100*time.Millisecond, &l, *key, *ttl); err != nil {
		fmt.Fprintln(os.Stderr, "lock:", err)
		os.Exit(1)
	}
	fence := l.FenceID()
	fmt.Printf("locked %d\n", fence)
	for n := 1; ; n++ {
		time.Sleep(*beat)
		fmt.Printf("write %d %d\n", fence, n)
		if err := nm.Update(10, 100*time.Millisecond, &l, *ttl); err != nil {
			fmt.Printf("update-error %v\n", err)
			fmt.Printf("write %d %d\n", fence, n+1)
			nm.Close(1, 100*time.Millisecond)
			return
		}
		fmt.Println("updated")
	}
}
