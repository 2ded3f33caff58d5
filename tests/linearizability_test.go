package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/faultproxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// linParams sizes one run of TestLinearizability.
type linParams struct {
	workers   int // one NetMutex connection each
	keys      int
	minOps    int           // operations recorded at least
	restarts  int           // SIGKILL + restart of the server during the run, at least
	maxRun    time.Duration // the run fails if it has not reached minOps and restarts by then
	checkTime time.Duration // porcupine's budget
}

// linSize is the CI size, scaled down under the race detector and up with
// NETMUTEX_SOAK=1 (see tests/README.md). The run with keys (every datagram sealed, the
// way a deployment runs) takes most of the operations; the plain run keeps the path
// without keys covered under the same faults, at a fifth of the size, so that the two
// together cost what one run did.
func linSize(keyed bool) linParams {
	p := linParams{workers: 16, keys: 8, minOps: 8000, restarts: 3, maxRun: 100 * time.Second, checkTime: 60 * time.Second}
	if !keyed {
		p.minOps, p.restarts = 2000, 1
	}
	if raceEnabled {
		p.minOps, p.restarts, p.maxRun = 2000, 2, 100*time.Second
		if !keyed {
			p.minOps, p.restarts = 1000, 1
		}
	}
	if os.Getenv("NETMUTEX_SOAK") != "" {
		p.workers, p.keys, p.minOps, p.restarts, p.maxRun, p.checkTime = 32, 16, 100000, 20, 20*time.Minute, 10*time.Minute
		if v, err := strconv.Atoi(os.Getenv("NETMUTEX_SOAK_OPS")); err == nil && v > 0 {
			p.minOps = v
		}
	}
	return p
}

// Client pacing in the run: 20% loss each way makes a round trip fail 36% of the time;
// 12 attempts of 40ms make giving up rare (0.36^12 ≈ 5e-6) yet keep a restart short.
const (
	linRetries = 12
	linTimeout = 40 * time.Millisecond
	linMaxTTL  = 800 * time.Millisecond
	// An Acquire waits this long at most: short, so that waits end (most of the
	// cancelled ones in a lock-delay) and the history stays small.
	linAcquireMin = 50 * time.Millisecond
	linAcquireMax = 200 * time.Millisecond
)

// linFaults are the faults of each direction of the proxy in the run.
var linFaults = faultproxy.Faults{Drop: 0.20, Duplicate: 0.05, Reorder: 0.05, Delay: 0.05, MaxDelay: 3 * time.Millisecond, Corrupt: 0.003}

// linSlack is how much later than r+T a lease may end: a copy of a request can reach
// the server that much after the client last sent it (a duplicate UPDATE extends the
// lease again), plus a margin for the kernel.
func linSlack() int64 { return int64(linFaults.MaxLatency() + 5*time.Millisecond) }

// recorder collects operations from all workers.
type recorder struct {
	epoch time.Time
	slack int64 // the model's slack (linSlack for TestLinearizability)
	mu    sync.Mutex
	ops   []porcupine.Operation
	n     atomic.Int64
	// Outcome counts, for the report.
	counts map[string]int
}

func (r *recorder) now() int64 { return int64(time.Since(r.epoch)) }

func (r *recorder) add(client int, in lockInput, out lockOutput) {
	ret := in.Ret
	switch out.Res {
	case resUnknown:
		ret = never // an unknown outcome lasts to the end of the history
	case resCancelled:
		ret = cancelledReturn(in.Call, in.Ret, r.slack) // granted at the latest then
	}
	r.mu.Lock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: in.Call, Output: out, Return: ret})
	r.counts[in.Kind.String()+" "+out.Res.String()]++
	r.mu.Unlock()
	if !in.Kind.everyKey() {
		r.n.Add(1)
	}
}

// TestLinearizability runs workers through a lossy, duplicating, reordering, corrupting
// proxy against netmutexd in its own process, kills the server with SIGKILL and
// restarts it from its data directory several times, and checks the recorded history
// with porcupine, plus the fences per key across the restarts. It runs with keys (the
// server and every client share a random key: every datagram is sealed, corrupted ones
// fail to open) and, smaller, without.
func TestLinearizability(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	t.Run("keys", func(t *testing.T) { testLinearizability(t, newKeyFile(t)) })
	t.Run("plain", func(t *testing.T) { testLinearizability(t, "") })
}

// testLinearizability is one run; keyFile "" means plain datagrams.
func testLinearizability(t *testing.T, keyFile string) {
	p := linSize(keyFile != "")
	bin := netmutexdBin(t)
	args := []string{"-max-ttl", linMaxTTL.String(), "-session-timeout", "5s", "-log-level", "info"}
	if keyFile != "" {
		args = append(args, "-key-file", keyFile)
	}
	d := newDaemon(t, bin, args...)
	d.start()

	lossy := linFaults
	px, err := faultproxy.New(faultproxy.Config{Upstream: d.addr, ToServer: lossy, ToClient: lossy, Logf: t.Logf})
	require.NoError(t, err)
	defer px.Close()
	// A request copy can reach the server at most this late: leases may end that much
	// after r+T (a duplicate UPDATE extends the lease again).
	slack := linSlack()

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
			lc := linConn{addrs: []string{px.Addr().String()}, keyFile: keyFile, retries: linRetries, timeout: linTimeout}
			linWorker(ctx, stop, w, p.keys, lc, rec, func(s string) {
				unexpected.Add(1)
				firstUnexpected.CompareAndSwap(nil, &s)
			})
		}(w)
	}

	// The chaos: restarts spread over the run, then wait for the operation count.
	restarts, blackholed := 0, false
	start := time.Now()
	for {
		ops := int(rec.n.Load())
		if ops >= p.minOps && restarts >= p.restarts {
			break
		}
		if ctx.Err() != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("after %v: %d operations and %d restarts, want %d and %d", p.maxRun, ops, restarts, p.minOps, p.restarts)
		}
		// Restart each time another minOps/(restarts+1) operations have been recorded.
		if restarts < p.restarts && ops >= (restarts+1)*p.minOps/(p.restarts+1) {
			c := rec.now()
			d.kill()
			time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond) // down for a while
			d.start()
			// The new server's lock-delay is the longest TTL it served with: -max-ttl.
			rec.add(p.workers, lockInput{Kind: opRestart, TTL: int64(linMaxTTL), Call: c, Ret: rec.now()}, lockOutput{Res: resOK})
			restarts++
			continue
		}
		// Once, between the first and second restarts, for longer than a call's
		// retries last: blackhole the replies (the server acts, nobody hears), then the
		// requests too, so that calls give up (unknown outcomes) and connections are
		// abandoned with locks possibly left behind.
		if restarts == 1 && !blackholed && ops >= p.minOps*3/(2*(p.restarts+1)) {
			blackholed = true
			px.Blackhole(faultproxy.ToClient, true)
			time.Sleep(linRetries * linTimeout / 2)
			px.Blackhole(faultproxy.ToServer, true)
			time.Sleep(linRetries*linTimeout/2 + 100*time.Millisecond)
			px.Blackhole(faultproxy.ToServer, false)
			px.Blackhole(faultproxy.ToClient, false)
			continue
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	runTime := time.Since(start)
	pst := px.Stats()

	ops := rec.ops
	t.Logf("keys: %v", keyFile != "")
	t.Logf("run: %v, %d operations (%d restarts) from %d connections over %d keys", runTime.Round(time.Millisecond), len(ops)-restarts, restarts, p.workers, p.keys)
	t.Logf("outcomes: %v", sortedCounts(rec.counts))
	t.Logf("faults: %v", pst)
	if n := unexpected.Load(); n > 0 {
		t.Errorf("%d unexpected errors, the first: %s", n, *firstUnexpected.Load())
	}
	// Every fault kind must have been injected, or the run proved less than it claims.
	assert.NotZero(t, pst.ToServer.Dropped, "no drop to the server: %v", pst)
	assert.NotZero(t, pst.ToClient.Dropped, "no drop to the client: %v", pst)
	assert.NotZero(t, pst.ToServer.Duplicated, "no duplicate to the server: %v", pst)
	assert.NotZero(t, pst.ToServer.Reordered, "no reordering to the server: %v", pst)
	assert.NotZero(t, pst.ToServer.Corrupted+pst.ToClient.Corrupted, "no corruption: %v", pst)
	assert.NotZero(t, pst.ToServer.Blackholed, "nothing blackholed to the server: %v", pst)
	assert.NotZero(t, pst.ToClient.Blackholed, "nothing blackholed to the client: %v", pst)

	markCrashes(ops)
	checkFences(t, ops)

	if path, hist, ok := checkLinearizable(t, ops, slack, p.checkTime); !ok {
		t.Fatalf("visualisation in %s, history in %s "+
			"(NETMUTEX_HISTORY=%s NETMUTEX_HISTORY_KEY=<key> go test -run TestAnalyzeHistory -v ./tests); proxy seed %d (%s, with -run %s), server log %s",
			path, hist, hist, px.Seed(), faultproxy.SeedEnv, t.Name(), d.logPath)
	}
}

// checkLinearizable checks ops with porcupine within budget and logs the verdict. When it
// is not Ok, it says so as an error, logs the verdict of each key, and writes the
// visualisation (path) and the history as JSON (hist) for TestAnalyzeHistory.
func checkLinearizable(t *testing.T, ops []porcupine.Operation, slack int64, budget time.Duration) (path, hist string, ok bool) {
	t.Helper()
	model := lockModel(slack)
	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(model, ops, budget)
	t.Logf("porcupine: %v in %v", res, time.Since(checkStart).Round(time.Millisecond))
	if res == porcupine.Ok {
		return "", "", true
	}
	path = filepath.Join(os.TempDir(), fmt.Sprintf("netmutex-linearizability-%d.html", time.Now().UnixNano()))
	if err := porcupine.VisualizePath(model, info, path); err != nil {
		t.Logf("visualisation: %v", err)
	}
	hist = strings.TrimSuffix(path, ".html") + ".json"
	if b, err := json.Marshal(ops); err == nil {
		os.WriteFile(hist, b, 0o644)
	}
	for _, part := range partitionByKey(ops) {
		if r := porcupine.CheckOperationsTimeout(model, part, budget); r != porcupine.Ok {
			t.Logf("key %s: %v (%d operations)", part[0].Input.(lockInput).Key, r, len(part))
		}
	}
	t.Errorf("porcupine says %v (want Ok) for %d operations", res, len(ops))
	return path, hist, false
}

// linConn is how a worker reaches the service, and its pacing.
type linConn struct {
	addrs   []string
	keyFile string
	retries int
	timeout time.Duration
}

// linWorker runs random operations on one connection, reopening it after an unknown
// outcome (which may have left a lock behind that would isolate the session) or an
// isolation.
func linWorker(ctx context.Context, stop <-chan struct{}, w, keys int, lc linConn, rec *recorder, unexpected func(string)) {
	rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
	var nm *netmutex.NetMutex
	defer func() {
		if nm != nil {
			nm.Close(2, lc.timeout)
		}
	}()
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return ctx.Err() != nil
		}
	}
	reopen := func() {
		if nm != nil {
			nm.Close(2, lc.timeout)
			nm = nil
		}
		for !stopped() {
			c, err := netmutex.Open(lc.retries, lc.timeout, lc.addrs, &netmutex.Options{
				IsolationInfo: fmt.Sprintf("worker %d", w), KeyFile: lc.keyFile,
				Retries: lc.retries, Timeout: lc.timeout, // Acquire's pacing until QUEUED
			})
			if err == nil {
				nm = c
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	classify := func(kind opKind, err error) outcome {
		switch {
		case err == nil:
			return resOK
		// The specific errors first: ErrLockDelay also satisfies errors.Is(ErrLocked),
		// and ErrLockLost errors.Is(ErrIsolated).
		case kind == opAcquire && errors.Is(err, netmutex.ErrTooMuchRetries):
			return resUnknown // given up, and its release could not be confirmed
		case kind == opAcquire && errors.Is(err, netmutex.ErrIsolated):
			return resIsolated
		case kind == opAcquire && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)):
			return resCancelled
		case kind == opAcquire && errors.Is(err, netmutex.ErrLocked):
			// A waiting LOCK waits through LOCKED and the lock-delay: the model rejects
			// both, and the run reports them.
			unexpected(fmt.Sprintf("worker %d: Acquire: %v", w, err))
			if errors.Is(err, netmutex.ErrLockDelay) {
				return resLockDelay
			}
			return resLocked
		case errors.Is(err, netmutex.ErrLockDelay) && kind == opLock:
			return resLockDelay
		case errors.Is(err, netmutex.ErrLocked) && kind == opLock:
			return resLocked
		case errors.Is(err, netmutex.ErrLockLost) && kind != opLock && kind != opAcquire:
			return resLockLost
		case errors.Is(err, netmutex.ErrIsolated):
			return resIsolated
		case errors.Is(err, netmutex.ErrTooMuchRetries):
			return resUnknown
		}
		unexpected(fmt.Sprintf("worker %d: %v: %v", w, kind, err))
		return resUnknown
	}
	for !stopped() {
		if nm == nil {
			reopen()
			continue
		}
		key := "key-" + strconv.Itoa(rng.IntN(keys))
		ttl := time.Duration(200+rng.IntN(int(linMaxTTL/time.Millisecond)-200)) * time.Millisecond
		var l netmutex.Lock
		// Half try-Lock, half Acquire: a waiting LOCK with a short deadline, so that
		// waits end (many cancelled, their grants released by the client's clean-up)
		// and the history stays small.
		kind := opLock
		if rng.IntN(2) == 0 {
			kind = opAcquire
		}
		c := rec.now()
		var err error
		if kind == opAcquire {
			actx, acancel := context.WithTimeout(ctx, linAcquireMin+time.Duration(rng.Int64N(int64(linAcquireMax-linAcquireMin))))
			err = nm.Acquire(actx, &l, key, ttl)
			acancel()
		} else {
			err = nm.Lock(lc.retries, lc.timeout, &l, key, ttl)
		}
		r := rec.now()
		res := classify(kind, err)
		rec.add(w, lockInput{Kind: kind, Key: key, TTL: int64(ttl), Call: c, Ret: r}, lockOutput{Res: res, Fence: l.FenceID()})
		switch res {
		case resUnknown, resIsolated:
			reopen()
			continue
		case resLocked, resLockDelay, resCancelled:
			// A cancelled Acquire keeps the connection: the client releases whatever
			// it was granted, and promises no orphan lock that would isolate the
			// session.
			time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
			continue
		}
		fence := l.FenceID()
		// Hold it a little, maybe heartbeat, then release.
		for held := true; held; {
			time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
			if rng.IntN(3) != 0 {
				break
			}
			ttl = time.Duration(200+rng.IntN(int(linMaxTTL/time.Millisecond)-200)) * time.Millisecond
			c = rec.now()
			err = nm.Update(lc.retries, lc.timeout, &l, ttl)
			r = rec.now()
			res = classify(opUpdate, err)
			rec.add(w, lockInput{Kind: opUpdate, Key: key, Fence: fence, TTL: int64(ttl), Call: c, Ret: r}, lockOutput{Res: res})
			held = res == resOK
		}
		switch res {
		case resUnknown, resIsolated:
			reopen()
			continue
		case resLockLost:
			continue
		}
		c = rec.now()
		err = nm.Unlock(lc.retries, lc.timeout, &l)
		r = rec.now()
		res = classify(opUnlock, err)
		rec.add(w, lockInput{Kind: opUnlock, Key: key, Fence: fence, Call: c, Ret: r}, lockOutput{Res: res})
		if res == resUnknown || res == resIsolated {
			reopen()
		}
	}
}

// markCrashes sets CrashDuring on every operation that a restart overlapped.
func markCrashes(ops []porcupine.Operation) {
	var restarts []lockInput
	for _, op := range ops {
		if in := op.Input.(lockInput); in.Kind == opRestart {
			restarts = append(restarts, in)
		}
	}
	for i := range ops {
		in := ops[i].Input.(lockInput)
		for _, r := range restarts {
			if in.Kind != opRestart && r.Call <= in.Ret && r.Ret >= in.Call {
				in.CrashDuring = true
			}
		}
		ops[i].Input = in
	}
}

// checkFences checks that fences are unique and strictly increase per key along real
// time, across the restarts: a grant that returned before another was called has the
// smaller fence.
func checkFences(t *testing.T, ops []porcupine.Operation) {
	t.Helper()
	type grant struct {
		c, r  int64
		fence uint64
	}
	byKey := map[string][]grant{}
	seen := map[uint64]string{}
	for _, op := range ops {
		in, out := op.Input.(lockInput), op.Output.(lockOutput)
		if (in.Kind != opLock && in.Kind != opAcquire) || out.Res != resOK {
			continue
		}
		assert.NotZero(t, out.Fence, "grant of %s with fence 0", in.Key)
		if k, dup := seen[out.Fence]; dup {
			t.Errorf("fence %d granted twice (%s and %s)", out.Fence, k, in.Key)
		}
		seen[out.Fence] = in.Key
		byKey[in.Key] = append(byKey[in.Key], grant{in.Call, in.Ret, out.Fence})
	}
	violations := 0
	for key, gs := range byKey {
		sort.Slice(gs, func(i, j int) bool { return gs[i].r < gs[j].r })
		// Walk by return time, keeping the highest fence of grants that returned before
		// each call: O(n log n) with a second list sorted by call.
		calls := append([]grant(nil), gs...)
		sort.Slice(calls, func(i, j int) bool { return calls[i].c < calls[j].c })
		var maxBefore uint64
		i := 0
		for _, g := range calls {
			for i < len(gs) && gs[i].r < g.c {
				maxBefore = max(maxBefore, gs[i].fence)
				i++
			}
			if g.fence <= maxBefore {
				violations++
				if violations <= 5 {
					t.Errorf("%s: fence %d granted at [%d, %d] after a grant with fence %d had returned", key, g.fence, g.c, g.r, maxBefore)
				}
			}
		}
	}
	assert.Zero(t, violations, "fence violations")
	t.Logf("fences: %d grants, unique, increasing per key in real time", len(seen))
}

func sortedCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for _, k := range keys {
		s += fmt.Sprintf("%s=%d ", k, m[k])
	}
	return s
}
