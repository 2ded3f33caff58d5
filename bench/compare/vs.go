package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/netmutex/netmutex/bench/load"
)

// Systems by the names -vs takes. "redis" is both Redis clients.
var peerNames = map[string][]string{
	"redis":         {"redis-rueidis", "redis-goredis"},
	"rueidis":       {"redis-rueidis"},
	"redis-rueidis": {"redis-rueidis"},
	"goredis":       {"redis-goredis"},
	"go-redis":      {"redis-goredis"},
	"redis-goredis": {"redis-goredis"},
	"etcd":          {"etcd"},
}

// parseVs turns "-vs redis,etcd" into the systems to run after netmutex, in order.
func parseVs(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" {
			continue
		}
		names, ok := peerNames[f]
		if !ok {
			return nil, fmt.Errorf("-vs: unknown system %q (known: redis, rueidis, goredis, etcd)", f)
		}
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out, nil
}

// lab sets systems up one at a time, hands out their lockers, and owns the one
// redis-server the Redis clients share.
type lab struct {
	o     *options
	log   io.Writer
	redis *redisServer
	// redisErr is why Redis cannot run, once known.
	redisErr error
}

// open sets up the system called name.
func (lb *lab) open(name string) (load.System, error) {
	switch name {
	case "netmutex":
		return load.StartNetmutex(&lb.o.Options)
	case "netmutexd":
		return openNetmutexd(lb.o, 1)
	case clusterName(lb.o.cluster):
		return openNetmutexd(lb.o, lb.o.cluster)
	case "redis-rueidis", "redis-goredis":
		if lb.redis == nil && lb.redisErr == nil {
			lb.redis, lb.redisErr = startRedis(lb.o.installRedis, lb.log)
		}
		if lb.redisErr != nil {
			return nil, lb.redisErr
		}
		if name == "redis-rueidis" {
			return startRueidis(lb.redis, lb.o.Conns, lb.o.TTL)
		}
		return startGoredis(lb.redis, lb.o.Conns, lb.o.goroutinesMax(), lb.o.TTL)
	case "etcd":
		fmt.Fprintln(lb.log, "starting embedded etcd ...")
		return startEtcd(lb.o.Conns, lb.o.TTL, lb.o.etcdFsync)
	}
	return nil, fmt.Errorf("unknown system %q", name)
}

func (lb *lab) close() {
	if lb.redis != nil {
		lb.redis.stop()
		lb.redis = nil
	}
}

// goroutinesMax is the most goroutines any run of this invocation uses: go-redis' pool
// is sized to it.
func (o *options) goroutinesMax() int {
	n := o.Goroutines
	if o.plot != "" {
		n = max(n, sweepGoroutines[len(sweepGoroutines)-1])
	}
	return n
}

// sweepGoroutines are the points of the -plot chart.
var sweepGoroutines = []int{1, 4, 16, 64, 256}

// sweepLatencyAt is the goroutine count whose latency distribution is plotted.
const sweepLatencyAt = 64

// latencyAt is sweepLatencyAt, or the largest sweep point when the sweep lacks it.
func latencyAt() int {
	for _, n := range sweepGoroutines {
		if n == sweepLatencyAt {
			return n
		}
	}
	return sweepGoroutines[len(sweepGoroutines)-1]
}

// compare runs the workload against every system in turn: netmutex first, then each
// peer; with -plot, also the sweep over sweepGoroutines. A peer that cannot be set up or
// fails is reported as skipped; the others still run.
func compare(o *options, rep *load.Report, human io.Writer) error {
	systems := o.systems()
	lb := &lab{o: o, log: human}
	defer lb.close()

	steps := len(systems)
	if o.plot != "" {
		steps += len(systems) * len(sweepGoroutines)
	}
	step := 0
	for _, name := range systems {
		sys, err := lb.open(name)
		if err != nil {
			if name == systems[0] {
				return err
			}
			fmt.Fprintf(human, "%s: SKIPPED: %v\n\n", name, err)
			rep.Skipped = append(rep.Skipped, load.Skip{System: name, Reason: err.Error()})
			step += steps / len(systems)
			continue
		}
		cache := &load.LockerCache{Sys: sys}
		failed := func(err error) bool {
			if err == nil {
				return false
			}
			if name == systems[0] {
				return true
			}
			fmt.Fprintf(human, "%s: SKIPPED: %v\n\n", name, err)
			rep.Skipped = append(rep.Skipped, load.Skip{System: name, Reason: err.Error()})
			return true
		}

		step++
		fmt.Fprintf(human, "[%d/%d] %s, %d goroutines, %v (%s)\n", step, steps, name, o.Goroutines, o.Duration, sys.(load.Noter).Note())
		r, err := cache.Run(o.Workload(o.Goroutines, o.Duration), human)
		if failed(err) {
			sys.Close()
			if name == systems[0] {
				return err
			}
			continue
		}
		r.Conns = o.Conns
		rep.Results = append(rep.Results, r)
		fmt.Fprintf(human, "  → %s pairs/s, p99 %s\n\n", load.Thousands(r.PairsPerSec), load.Micros(r.Pair.P99))

		if o.plot != "" {
			for _, n := range sweepGoroutines {
				step++
				fmt.Fprintf(human, "[%d/%d] sweep: %s, %d goroutines, %v\n", step, steps, name, n, o.sweepD)
				r, err := cache.Run(o.Workload(n, o.sweepD), nil)
				if failed(err) {
					break
				}
				r.Conns = o.Conns
				rep.Sweep = append(rep.Sweep, r)
				fmt.Fprintf(human, "  → %s pairs/s, p99 %s\n", load.Thousands(r.PairsPerSec), load.Micros(r.Pair.P99))
			}
			fmt.Fprintln(human)
		}
		if err := sys.Close(); err != nil {
			fmt.Fprintf(human, "%s: closing: %v\n", name, err)
		}
	}
	return nil
}

// printComparison prints one table over every system, netmutex first.
func printComparison(w io.Writer, rs []*load.Result, skipped []load.Skip) {
	if len(rs) == 0 {
		return
	}
	nm := rs[0]
	ratio := func(r *load.Result) string {
		if r == nm {
			return "1.00×"
		}
		if r.PairsPerSec == 0 {
			return "∞"
		}
		return fmt.Sprintf("%.2f×", nm.PairsPerSec/r.PairsPerSec)
	}
	if nm.Contended {
		fmt.Fprintf(w, "%-14s %14s %14s %10s %10s %10s %8s %10s %10s %9s %10s\n",
			"system", "acquisitions/s", "refusals/s", "wait p50", "wait p99", "wait p99.9", "fairness", "pair p50", "allocs/op", "CPU s/Mop", "netmutex ÷")
		for _, r := range rs {
			lat := func(v float64) string {
				if r.Pairs == 0 {
					return "never"
				}
				return load.Micros(v)
			}
			fmt.Fprintf(w, "%-14s %14s %14s %10s %10s %10s %8.3f %10s %10.2f %9.2f %10s\n",
				r.System, load.Thousands(r.PairsPerSec), load.Thousands(r.RefusalsPerSec), lat(r.Wait.P50), lat(r.Wait.P99), lat(r.Wait.P999),
				r.Fairness, lat(r.Pair.P50), r.AllocsPerOp, r.CPUPerMop, ratio(r))
		}
	} else {
		fmt.Fprintf(w, "%-14s %11s %10s %10s %10s %10s %9s %10s\n",
			"system", "pairs/s", "p50", "p99", "p99.9", "allocs/op", "CPU s/Mop", "netmutex ÷")
		for _, r := range rs {
			fmt.Fprintf(w, "%-14s %11s %10s %10s %10s %10.2f %9.2f %10s\n",
				r.System, load.Thousands(r.PairsPerSec), load.Micros(r.Pair.P50), load.Micros(r.Pair.P99), load.Micros(r.Pair.P999),
				r.AllocsPerOp, r.CPUPerMop, ratio(r))
		}
	}
	for _, s := range skipped {
		fmt.Fprintf(w, "%-14s SKIPPED: %s\n", s.System, s.Reason)
	}
	fmt.Fprintln(w)
	if nm.Contended {
		fmt.Fprintln(w, "netmutex ÷: netmutex's acquisitions/s (handoffs/s) divided by the system's. Wait: from a")
		fmt.Fprintln(w, "goroutine's first attempt until it is granted. Each system with a waiting lock waits in it")
		fmt.Fprintln(w, "(netmutex Acquire, etcd Mutex.Lock); the Redis clients have none and retry a try-lock at")
		fmt.Fprintln(w, "once. Fairness: Jain's index over the goroutines' acquisition counts (1 = equal).")
	} else {
		fmt.Fprintln(w, "netmutex ÷: netmutex's pairs/s divided by the system's. Latency is of one lock+unlock pair.")
	}
	fmt.Fprintln(w, "allocs/op and CPU cover this process (client, and the servers embedded in it: netmutex's, etcd's);")
	fmt.Fprintln(w, "CPU also counts the server processes (redis-server; netmutexd with -cluster). Errors:")
	for _, r := range rs {
		e := "0"
		if r.Errors > 0 {
			e = fmt.Sprintf("%d (first: %s)", r.Errors, r.FirstErr)
		}
		fmt.Fprintf(w, "  %-14s %s\n", r.System, e)
	}
	fmt.Fprintln(w, "Settings:")
	for _, r := range rs {
		fmt.Fprintf(w, "  %-14s %s\n", r.System, r.Note)
	}
}

// printSweep prints pairs/s per goroutine count, one row per system.
func printSweep(w io.Writer, rs []*load.Result) {
	if len(rs) == 0 {
		return
	}
	byName := map[string]map[int]*load.Result{}
	var order []string
	for _, r := range rs {
		if byName[r.System] == nil {
			byName[r.System] = map[int]*load.Result{}
			order = append(order, r.System)
		}
		byName[r.System][r.Goroutines] = r
	}
	fmt.Fprintf(w, "%-14s", "pairs/s at")
	for _, n := range sweepGoroutines {
		fmt.Fprintf(w, " %11s", fmt.Sprintf("c=%d", n))
	}
	fmt.Fprintf(w, "   p99 at c=%d\n", latencyAt())
	for _, name := range order {
		fmt.Fprintf(w, "%-14s", name)
		for _, n := range sweepGoroutines {
			if r := byName[name][n]; r != nil {
				fmt.Fprintf(w, " %11s", load.Thousands(r.PairsPerSec))
			} else {
				fmt.Fprintf(w, " %11s", "-")
			}
		}
		if r := byName[name][latencyAt()]; r != nil {
			fmt.Fprintf(w, "   %s", load.Micros(r.Pair.P99))
		}
		fmt.Fprintln(w)
	}
}

// estimate estimates how long the whole invocation runs, for the first line.
func (o *options) estimate() time.Duration {
	n := time.Duration(len(o.systems()))
	d := n * (o.Warmup + o.Duration)
	if o.plot != "" {
		d += n * time.Duration(len(sweepGoroutines)) * (o.Warmup + o.sweepD)
	}
	return d
}
