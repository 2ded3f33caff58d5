// Command bench is netmutex's load generator: `go run ./bench` starts an embedded
// server on loopback (or loads an external one, -addr), runs lock+unlock pairs from many
// goroutines for a fixed time and prints throughput, latency, allocations, CPU and
// batching figures. With -cluster N it loads N netmutexd processes replicated with Raft,
// then one netmutexd process and the embedded server, and prints them side by side.
//
// It is a module of its own (github.com/netmutex/netmutex/bench) whose only dependency
// is netmutex itself, so that its first build takes seconds. The comparison with Redis
// and etcd, which needs their clients and servers, is another module:
// `go run ./bench/compare` (bench/compare). Both share the load generator of package
// github.com/netmutex/netmutex/bench/load.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/netmutex/netmutex/bench/load"
)

// movedFlags are the comparison's flags, which moved to bench/compare.
var movedFlags = []string{"vs", "plot", "sweep-d", "install-redis", "etcd-fsync"}

func parseFlags(args []string, stderr io.Writer) (*load.Options, int, error) {
	for _, a := range args {
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		for _, m := range movedFlags {
			if name == m {
				return nil, 0, fmt.Errorf("-%s belongs to the comparison with peers, a module of its own: go run ./bench/compare -%s ... (see bench/README.md)", m, m)
			}
		}
	}
	o := &load.Options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.Register(fs)
	cluster := registerCluster(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: go run ./bench [flags]")
		fmt.Fprintln(fs.Output(), "\nnetmutex alone under load. The comparison with Redis and etcd is go run ./bench/compare.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, 0, err
	}
	if fs.NArg() > 0 {
		return nil, 0, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if err := o.Check(); err != nil {
		return nil, 0, err
	}
	if err := checkCluster(*cluster, o); err != nil {
		return nil, 0, err
	}
	return o, *cluster, nil
}

func main() {
	if err := mainErr(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func mainErr(args []string, stdout, stderr io.Writer) error {
	o, cluster, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	stop, err := o.StartCPUProfile()
	if err != nil {
		return err
	}
	defer stop()
	rep := &load.Report{Machine: load.DescribeMachine()}
	// Human output goes to stdout, unless stdout is for JSON.
	human := stdout
	if o.JSON {
		human = stderr
	}
	load.PrintMachine(human, rep.Machine)
	fmt.Fprintf(human, "workload: %s\n\n", o.DescribeWorkload())
	if cluster > 0 {
		return runCluster(o, cluster, rep, stdout, human)
	}

	sys, err := load.StartNetmutex(o)
	if err != nil {
		return err
	}
	cache := &load.LockerCache{Sys: sys}
	r, err := cache.Run(o.Workload(o.Goroutines, o.Duration), human)
	cerr := sys.Close()
	if err != nil {
		return err
	}
	if cerr != nil {
		fmt.Fprintln(stderr, "bench: closing netmutex:", cerr)
	}
	r.Conns = o.Conns
	rep.Results = append(rep.Results, r)
	if o.JSON {
		return load.WriteJSON(stdout, rep)
	}
	fmt.Fprintln(stdout)
	printResult(stdout, r)
	return nil
}

// printResult prints netmutex's result as a two-column table.
func printResult(w io.Writer, r *load.Result) {
	row := func(name, value, note string) {
		line := fmt.Sprintf("  %-26s %20s", name, value)
		if note != "" {
			line += "   " + note
		}
		fmt.Fprintln(w, line)
	}
	th, us := load.Thousands, load.Micros
	fmt.Fprintf(w, "%s: %s\n", r.System, r.Note)
	row("lock operations/s", th(r.OpsPerSec), "lock attempts + unlocks, each one request")
	if r.Contended && r.Waiting {
		row("handoffs/s", th(r.PairsPerSec), "Acquire waits in the server's queue; each grant unlocked at once")
		row("fairness", fmt.Sprintf("%.3f", r.Fairness), "Jain's index over the goroutines' acquisitions (1 = equal)")
	} else if r.Contended {
		row("acquisitions/s", th(r.PairsPerSec), "granted locks, each unlocked at once")
		row("refusals/s", th(r.RefusalsPerSec), "lock attempts refused: key held by another goroutine")
		row("fairness", fmt.Sprintf("%.3f", r.Fairness), "Jain's index over the goroutines' acquisitions (1 = equal)")
	} else {
		row("lock+unlock pairs/s", th(r.PairsPerSec), "")
		if r.Refusals > 0 {
			row("refusals/s", th(r.RefusalsPerSec), "keys shared between goroutines")
		}
	}
	row("pair latency p50", us(r.Pair.P50), "a granted lock and its unlock, back to back")
	row("             p90", us(r.Pair.P90), "")
	row("             p99", us(r.Pair.P99), "")
	row("             p99.9", us(r.Pair.P999), "")
	if r.Contended {
		row("wait for the key p50", us(r.Wait.P50), "from a goroutine's first attempt until it is granted")
		row("                 p90", us(r.Wait.P90), "")
		row("                 p99", us(r.Wait.P99), "")
		row("                 p99.9", us(r.Wait.P999), "")
	}
	allocs := "client"
	if r.Transport != nil && r.Transport.HasServer {
		allocs = "whole process: client and embedded server"
	}
	row("allocations/operation", fmt.Sprintf("%.2f", r.AllocsPerOp), allocs)
	row("CPU s/million operations", fmt.Sprintf("%.2f", r.CPUPerMop), "user+sys of "+r.CPUWhat)
	row("cores busy", fmt.Sprintf("%.2f", r.CPUPerMop*r.OpsPerSec/1e6), "the same CPU time over the measured seconds")
	if t := r.Transport; t != nil {
		row("client frames/datagram", fmt.Sprintf("%.1f out, %.1f in", t.ClientFramesPerDatagramOut, t.ClientFramesPerDatagramIn), "")
		row("client datagrams/syscall", fmt.Sprintf("%.2f send, %.2f recv", t.ClientDatagramsPerSendCall, t.ClientDatagramsPerRecvCall), "")
		if t.HasServer {
			row("server frames/datagram", fmt.Sprintf("%.1f in, %.1f out", t.ServerFramesPerDatagramIn, t.ServerFramesPerDatagramOut), "")
			row("server datagrams/syscall", fmt.Sprintf("%.2f recv, %.2f send", t.ServerDatagramsPerRecvCall, t.ServerDatagramsPerSendCall), "")
		} else {
			row("server frames, syscalls", "n/a", "external server")
		}
	}
	errs := "0"
	if r.Errors > 0 {
		errs = fmt.Sprintf("%d (first: %s)", r.Errors, r.FirstErr)
	}
	row("errors", errs, "")
	row("measured", fmt.Sprintf("%.2fs", r.Seconds), fmt.Sprintf("%s operations, %s pairs", th(float64(r.Ops)), th(float64(r.Pairs))))
}
