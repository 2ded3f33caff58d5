// Command compare runs netmutex and its peers, Redis (through rueidis and go-redis) and
// an embedded etcd, in turns under the same workload, and prints them side by side:
//
//	go run ./bench/compare -vs redis,etcd -plot compare.png
//
// It is a module of its own (github.com/netmutex/netmutex/bench/compare), so that the
// peers' clients and servers and gonum/plot are dependencies of the comparison alone:
// neither the library nor `go run ./bench` (netmutex alone) compiles them. The load
// generator is the bench module's, package github.com/netmutex/netmutex/bench/load.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/netmutex/netmutex/bench/load"
)

// options are the command line: the bench's shared flags, and the comparison's own.
type options struct {
	load.Options

	vs           []string // peers to compare with, in order
	plot         string
	sweepD       time.Duration
	installRedis bool
	etcdFsync    bool
	cluster      int // -cluster: nodes; 0: the embedded server
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.Register(fs)
	vs := fs.String("vs", "redis,etcd", "compare with these systems, in turns, same workload: redis (= rueidis,goredis), rueidis, goredis, etcd; \"\" for netmutex alone (with -plot)")
	fs.StringVar(&o.plot, "plot", "", "write a chart (.png or .svg): pairs/s against goroutines 1..256 for every system, latency at 64")
	fs.DurationVar(&o.sweepD, "sweep-d", 2*time.Second, "measured duration of each point of the -plot sweep")
	fs.BoolVar(&o.installRedis, "install-redis", false, "when redis-server is missing, install it: runs bench/compare/install-redis.sh (sudo apt-get install redis-server)")
	fs.BoolVar(&o.etcdFsync, "etcd-fsync", true, "etcd fsyncs its log (its default); false sets UnsafeNoFsync")
	registerCluster(fs, o)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: go run ./bench/compare [flags]")
		fmt.Fprintln(fs.Output(), "\nnetmutex, then each peer of -vs, under the same workload. Without -install-redis, a missing\nredis-server skips the Redis peers.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if err := o.Check(); err != nil {
		return nil, err
	}
	if o.sweepD <= 0 {
		return nil, fmt.Errorf("-sweep-d must be positive")
	}
	if o.plot != "" && !strings.HasSuffix(o.plot, ".png") && !strings.HasSuffix(o.plot, ".svg") {
		return nil, fmt.Errorf("-plot: file name must end in .png or .svg")
	}
	if err := checkCluster(fs, o, vs); err != nil {
		return nil, err
	}
	var err error
	if o.vs, err = parseVs(*vs); err != nil {
		return nil, err
	}
	return o, nil
}

func main() {
	if err := mainErr(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func mainErr(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
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

	fmt.Fprintf(human, "comparing netmutex with %s; about %v of load in all\n\n", orNone(o.vs), o.estimate().Round(time.Second))
	if err := compare(o, rep, human); err != nil {
		return err
	}
	if o.plot != "" {
		if err := writePlot(o.plot, rep); err != nil {
			fmt.Fprintln(stderr, "compare: -plot:", err)
		} else {
			rep.Plot = o.plot
			fmt.Fprintf(human, "chart written to %s\n", o.plot)
		}
	}
	if o.JSON {
		return load.WriteJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "\n== %s\n", o.DescribeWorkload())
	printComparison(stdout, rep.Results, rep.Skipped)
	if len(rep.Sweep) > 0 {
		fmt.Fprintf(stdout, "\n== sweep: %v measured per point, %s\n", o.sweepD, o.KeysWord())
		printSweep(stdout, rep.Sweep)
	}
	return nil
}

func orNone(vs []string) string {
	if len(vs) == 0 {
		return "nothing (netmutex alone)"
	}
	return strings.Join(vs, ", ")
}
