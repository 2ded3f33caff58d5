package tests

// The failover as a busy client sees it, in figures.

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/faultproxy"
)

// TestClusterFailoverTime measures what a busy client sees of a failover: it locks and
// unlocks on the leader without pause; the leader is killed; the time from the kill to
// the end of the first Lock called after it that succeeds. The killed node restarts
// between kills. Only that a success follows each kill within clusterCallWait is
// asserted; the figures are logged.
func TestClusterFailoverTime(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster of three netmutexd")
	}
	kills := 5
	if os.Getenv("NETMUTEX_SOAK") != "" {
		kills = 30
	}
	c := startCluster(t, newKeyFile(t), faultproxy.Faults{})
	nm := openCluster(t, c, "failover time", netmutex.Options{Timeout: 50 * time.Millisecond})

	type grant struct{ call, ret time.Time }
	var mu sync.Mutex
	var grants []grant
	errs := map[string]int{}
	stop := make(chan struct{})
	done := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	go func() {
		defer close(done)
		for i := 0; !stopped(); i++ {
			var l netmutex.Lock
			call := time.Now()
			err := within(func(ctx context.Context) error { return nm.LockContext(ctx, &l, fmt.Sprintf("ft-%d", i), clusterTTL) })
			ret := time.Now()
			mu.Lock()
			if err != nil {
				errs["Lock: "+err.Error()]++
			} else {
				grants = append(grants, grant{call, ret})
			}
			mu.Unlock()
			// A lock left held would expire and isolate the session: unlock until done
			// (or the test ends).
			for try := 0; err == nil && l.Key() != "" && try < 10 && !stopped(); try++ {
				if err := within(func(ctx context.Context) error { return nm.UnlockContext(ctx, &l) }); err != nil {
					mu.Lock()
					errs["Unlock: "+err.Error()]++
					mu.Unlock()
				}
			}
		}
	}()
	defer func() {
		close(stop)
		<-done
	}()
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(grants)
	}
	var took []time.Duration
	for k := 0; k < kills; k++ {
		// Busy on a settled cluster first.
		for n := count() + 20; count() < n; {
			time.Sleep(5 * time.Millisecond)
		}
		leader := c.waitLeader()
		before := c.proxyFigures()
		killed := time.Now()
		c.kill(leader)
		var first time.Duration
		for deadline := killed.Add(clusterCallWait); first == 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			for _, g := range grants {
				if !g.call.Before(killed) {
					first = g.ret.Sub(killed)
					break
				}
			}
			mu.Unlock()
		}
		if first == 0 {
			mu.Lock()
			e := fmt.Sprint(errs)
			mu.Unlock()
			t.Fatalf("kill %d of %s: no Lock called after it succeeded within %v (errors: %v); the leader now: %s; through the proxies at the kill: %s; now: %s",
				k+1, c.nodes[leader].name, clusterCallWait, e, c.nodes[c.waitLeader()].name, before, c.proxyFigures())
		}
		took = append(took, first)
		c.start(leader)
		c.waitLeader()
		time.Sleep(300 * time.Millisecond) // the restarted node catches up
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	q := func(p float64) time.Duration { return took[max(0, int(p*float64(len(took))+0.999999)-1)] }
	mu.Lock()
	defer mu.Unlock()
	t.Logf("failover seen by a busy client, SIGKILL of the leader to its first successful Lock, over %d kills: p50 %v, p99 %v, max %v (all: %v)",
		len(took), q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), took)
	t.Logf("%d grants in all; errors: %v", len(grants), errs)
}
