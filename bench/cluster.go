// -cluster N: the main job against a cluster of N netmutexd processes replicated with
// Raft, and beside it, in the same run, against one netmutexd process and the embedded
// server of the normal run.

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/netmutex/netmutex/bench/load"
)

func registerCluster(fs *flag.FlagSet) *int {
	return fs.Int("cluster", 0, "load a cluster of this many netmutexd processes replicated with Raft (fsync on), then one netmutexd process and the embedded server, same job, side by side; 0: the embedded server alone")
}

func checkCluster(n int, o *load.Options) error {
	switch {
	case n == 0:
		return nil
	case n < 2:
		return errors.New("-cluster must be 0 (none) or at least 2 nodes (3 survives the loss of one)")
	case o.Addr != "":
		return errors.New("-cluster starts its own servers: drop -addr")
	}
	return nil
}

// runCluster runs the job against the cluster, one netmutexd and the embedded server,
// in that order, and prints each result, then the three side by side.
func runCluster(o *load.Options, n int, rep *load.Report, stdout, human io.Writer) error {
	dir, err := os.MkdirTemp("", "netmutex-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintln(human, "building netmutexd ...")
	bin, err := load.BuildNetmutexd(dir)
	if err != nil {
		return err
	}
	// Each returns a nil System on error, not a typed nil.
	daemons := func(n int) func() (load.System, error) {
		return func() (load.System, error) {
			s, err := load.StartNetmutexd(o, bin, n)
			if err != nil {
				return nil, err
			}
			return s, nil
		}
	}
	starts := []func() (load.System, error){
		daemons(n),
		daemons(1),
		func() (load.System, error) {
			s, err := load.StartNetmutex(o)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
	}
	for i, start := range starts {
		sys, err := start()
		if err != nil {
			return err
		}
		fmt.Fprintf(human, "[%d/%d] %s (%s)\n", i+1, len(starts), sys.Name(), sys.(load.Noter).Note())
		r, err := (&load.LockerCache{Sys: sys}).Run(o.Workload(o.Goroutines, o.Duration), human)
		cerr := sys.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", sys.Name(), err)
		}
		if cerr != nil {
			fmt.Fprintf(human, "%s: closing: %v\n", sys.Name(), cerr)
		}
		r.Conns = o.Conns
		rep.Results = append(rep.Results, r)
		fmt.Fprintf(human, "  → %s pairs/s, p50 %s, p99 %s\n\n", load.Thousands(r.PairsPerSec), load.Micros(r.Pair.P50), load.Micros(r.Pair.P99))
	}
	if o.JSON {
		return load.WriteJSON(stdout, rep)
	}
	for _, r := range rep.Results {
		fmt.Fprintln(stdout)
		printResult(stdout, r)
	}
	fmt.Fprintf(stdout, "\n== side by side: %s\n", o.DescribeWorkload())
	printSideBySide(stdout, rep.Results)
	return nil
}

// printSideBySide prints one row per result, the first as the reference.
func printSideBySide(w io.Writer, rs []*load.Result) {
	fmt.Fprintf(w, "%-16s %11s %10s %10s %10s %10s %9s %9s\n", "system", "pairs/s", "p50", "p99", "p99.9", "allocs/op", "CPU s/Mop", "× first")
	for _, r := range rs {
		ratio := "-"
		if rs[0].PairsPerSec > 0 {
			ratio = fmt.Sprintf("%.2f×", r.PairsPerSec/rs[0].PairsPerSec)
		}
		fmt.Fprintf(w, "%-16s %11s %10s %10s %10s %10.2f %9.2f %9s\n", r.System, load.Thousands(r.PairsPerSec),
			load.Micros(r.Pair.P50), load.Micros(r.Pair.P99), load.Micros(r.Pair.P999), r.AllocsPerOp, r.CPUPerMop, ratio)
	}
	fmt.Fprintln(w, "netmutex-raftN: N netmutexd processes replicated with Raft, loaded on the leader; netmutexd: one")
	fmt.Fprintln(w, "process; netmutex: the server embedded in this process. × first: pairs/s over the first row's.")
	fmt.Fprintln(w, "allocs/op counts this process; CPU adds the netmutexd processes' own.")
}
