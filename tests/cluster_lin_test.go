package tests

// TestClusterLinearizability: the workers and the model of TestLinearizability against a
// three-node cluster, with faults on every node's UDP proxy, while the leader is killed
// and restarted, cut off and healed, and every node restarted in turn.

import (
	"context"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/netmutex/netmutex/internal/faultproxy"
	"github.com/stretchr/testify/assert"
)

// clusterFaults are lighter than linFaults: every loss costs a retransmission that a
// failover already makes long, and the client must tell a lossy server from a dead one.
var clusterFaults = faultproxy.Faults{Drop: 0.05, Duplicate: 0.03, Reorder: 0.03, Delay: 0.03, MaxDelay: 3 * time.Millisecond, Corrupt: 0.003}

// Client pacing: a call rides out a failover (about a second) rather than giving up,
// which would make its outcome unknown.
const (
	clusterLinRetries = 40
	clusterLinTimeout = 40 * time.Millisecond
)

// clusterFailoverMargin widens each leaderless time the model is told of: the log's
// time stands still from the old leader's last committed entry (stamped up to a tick and
// a commit before its end) until the new leader's first, and the reigns are read from
// log lines of millisecond precision.
const clusterFailoverMargin = 250 * time.Millisecond

// clusterLinSize sizes the run: rounds of chaos (a kill and restart of the leader, a
// partition and heal of the leader, a roll restart), spread over minOps operations.
func clusterLinSize() linParams {
	p := linParams{workers: 16, keys: 8, minOps: 6000, restarts: 2, maxRun: 100 * time.Second, checkTime: 60 * time.Second}
	if raceEnabled {
		p.minOps, p.restarts = 2000, 1
	}
	if os.Getenv("NETMUTEX_SOAK") != "" {
		p.workers, p.keys, p.minOps, p.restarts, p.maxRun, p.checkTime = 32, 16, 60000, 6, 20*time.Minute, 10*time.Minute
		if v, err := strconv.Atoi(os.Getenv("NETMUTEX_SOAK_OPS")); err == nil && v > 0 {
			p.minOps = v
		}
	}
	return p
}

func TestClusterLinearizability(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	p := clusterLinSize()
	slack := int64(clusterFaults.MaxLatency() + 5*time.Millisecond)
	c := startCluster(t, newKeyFile(t), clusterFaults, "-max-ttl", linMaxTTL.String(), "-session-timeout", "5s")

	rec := &recorder{epoch: time.Now(), slack: slack, counts: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), p.maxRun)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var unexpected atomic.Int64
	var firstUnexpected atomic.Pointer[string]
	for w := 0; w < p.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			lc := linConn{addrs: c.addrs(), keyFile: c.keyFile, retries: clusterLinRetries, timeout: clusterLinTimeout}
			linWorker(ctx, stop, w, p.keys, lc, rec, func(s string) {
				unexpected.Add(1)
				firstUnexpected.CompareAndSwap(nil, &s)
			})
		}(w)
	}

	// The chaos, spread over the run by operation count: each round kills the leader
	// (and restarts it once another leads), cuts the leader off (and heals it once it has
	// stepped down), and restarts every node in turn.
	acts := []string{"kill", "partition", "roll"}
	var steps []string
	for r := 0; r < p.restarts; r++ {
		steps = append(steps, acts...)
	}
	done := map[string]int{}
	start := time.Now()
	for step := 0; ; {
		ops := int(rec.n.Load())
		if ops >= p.minOps && step == len(steps) {
			break
		}
		if ctx.Err() != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("after %v: %d operations and %d of %d chaos steps, want %d operations", p.maxRun, ops, step, len(steps), p.minOps)
		}
		if step == len(steps) || ops < (step+1)*p.minOps/(len(steps)+1) {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		switch steps[step] {
		case "kill":
			l := c.waitLeader()
			c.kill(l)
			time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
			c.waitLeader()
			c.start(l)
		case "partition":
			l := c.waitLeader()
			c.partition(l)
			c.waitLeader()
			c.waitFollower(l)
			time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
			c.heal(l)
			c.waitLeader()
		case "roll":
			c.rollRestart(nil)
		}
		done[steps[step]]++
		step++
	}
	close(stop)
	wg.Wait()
	runTime := time.Since(start)

	failovers := failoverOps(c.reigns(), rec.epoch, p.workers)
	ops := append(rec.ops, failovers...)
	stretchCancelled(ops, failovers)
	var leaderless []string
	for _, f := range failovers {
		leaderless = append(leaderless, (time.Duration(f.Return-f.Call) - 2*clusterFailoverMargin).Round(time.Millisecond).String())
	}
	t.Logf("cluster: 3 nodes; leader killed %d times, cut off %d times, roll restarts %d", done["kill"], done["partition"], done["roll"])
	t.Logf("run: %v, %d operations from %d connections over %d keys", runTime.Round(time.Millisecond), len(rec.ops), p.workers, p.keys)
	t.Logf("failovers: %d, leaderless for %s (each widened by %v on both sides for the model)", len(failovers), strings.Join(leaderless, ", "), clusterFailoverMargin)
	t.Logf("outcomes: %v", sortedCounts(rec.counts))
	var sum faultproxy.Counters
	for _, n := range c.nodes {
		st := n.udp.Stats()
		t.Logf("faults %s: %v", n.name, st)
		sum.Dropped += st.ToServer.Dropped + st.ToClient.Dropped
		sum.Duplicated += st.ToServer.Duplicated + st.ToClient.Duplicated
		sum.Reordered += st.ToServer.Reordered + st.ToClient.Reordered
		sum.Delayed += st.ToServer.Delayed + st.ToClient.Delayed
		sum.Corrupted += st.ToServer.Corrupted + st.ToClient.Corrupted
		sum.Blackholed += st.ToServer.Blackholed + st.ToClient.Blackholed
	}
	if n := unexpected.Load(); n > 0 {
		t.Errorf("%d unexpected errors, the first: %s", n, *firstUnexpected.Load())
	}
	// Every fault kind must have been injected, or the run proved less than it claims.
	assert.NotZero(t, sum.Dropped, "no drop: %+v", sum)
	assert.NotZero(t, sum.Duplicated, "no duplicate: %+v", sum)
	assert.NotZero(t, sum.Reordered, "no reordering: %+v", sum)
	assert.NotZero(t, sum.Delayed, "no delay: %+v", sum)
	assert.NotZero(t, sum.Corrupted, "no corruption: %+v", sum)
	assert.NotZero(t, sum.Blackholed, "nothing blackholed: %+v", sum)
	assert.GreaterOrEqual(t, len(failovers), 2*p.restarts, "failovers: a kill and a partition of the leader per round at least")

	checkFences(t, ops)
	if path, hist, ok := checkLinearizable(t, ops, slack, p.checkTime); !ok {
		t.Fatalf("visualisation in %s, history in %s "+
			"(NETMUTEX_HISTORY=%s NETMUTEX_HISTORY_KEY=<key> go test -run TestAnalyzeHistory -v ./tests); the servers' logs: %s",
			path, hist, hist, c.logPaths())
	}
}

// failoverOps turns the gaps between reigns into Failover operations, widened by
// clusterFailoverMargin on each side, in the recorder's time from epoch; client is
// their ClientId.
func failoverOps(rs []reign, epoch time.Time, client int) []porcupine.Operation {
	sort.Slice(rs, func(i, j int) bool { return rs[i].start.Before(rs[j].start) })
	epoch = epoch.Round(0) // log lines carry wall-clock times only
	var out []porcupine.Operation
	for i := 1; i < len(rs); i++ {
		end, next := rs[i-1].end, rs[i].start
		if end.IsZero() || end.After(next) {
			end = next // two said they led at once: the earlier one's end is not known
		}
		call := int64(end.Sub(epoch) - clusterFailoverMargin)
		ret := int64(next.Sub(epoch) + clusterFailoverMargin)
		in := lockInput{Kind: opFailover, TTL: ret - call, Call: call, Ret: ret}
		out = append(out, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: lockOutput{Res: resOK}, Return: ret})
	}
	return out
}

// stretchCancelled delays the latest grant of each cancelled Acquire by the failovers
// it overlaps: the server's wait bound is counted in the log's time too.
func stretchCancelled(ops, failovers []porcupine.Operation) {
	for i := range ops {
		if ops[i].Output.(lockOutput).Res != resCancelled {
			continue
		}
		for _, f := range failovers { // in time order: a stretch may reach a later one
			if f.Call < ops[i].Return && f.Return > ops[i].Call {
				ops[i].Return += f.Input.(lockInput).TTL
			}
		}
	}
}

// reign is a time some node led.
type reign struct {
	node       int
	start, end time.Time // end zero: leads still
}

// reigns are the times each node led, from the logs and the test's own acts: a reign
// ends at the node's "no longer leading", or when the test killed, stopped or cut it
// off, whichever came first (a cut-off leader says so only at its lease's end).
func (c *testCluster) reigns() []reign {
	c.mu.Lock()
	events := append([]clusterEvent(nil), c.events...)
	c.mu.Unlock()
	var out []reign
	for i := range c.nodes {
		var cur *reign
		closeAt := func(at time.Time) {
			if cur != nil {
				cur.end = at
				out = append(out, *cur)
				cur = nil
			}
		}
		ev := 0
		for _, r := range c.roles(i) {
			for ; ev < len(events) && !events[ev].at.After(r.at); ev++ {
				if e := events[ev]; e.node == i && e.kind != "start" && e.kind != "heal" {
					closeAt(e.at)
				}
			}
			switch r.what {
			case "leading":
				if cur == nil {
					cur = &reign{node: i, start: r.at}
				}
			default:
				closeAt(r.at)
			}
		}
		for ; ev < len(events); ev++ {
			if e := events[ev]; e.node == i && e.kind != "start" && e.kind != "heal" {
				closeAt(e.at)
			}
		}
		if cur != nil {
			out = append(out, *cur)
		}
	}
	return out
}
