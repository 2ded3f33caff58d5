// Command bench is netmutex's load generator: `go run ./bench` starts an embedded
// server on loopback, runs lock+unlock pairs from many goroutines for a fixed time and
// prints throughput, latency, allocations, CPU and batching figures.
//
// It is a module of its own (github.com/netmutex/netmutex/bench), so the peers' clients
// it compares against never become dependencies of the netmutex library.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// options are the command line.
type options struct {
	addr       string
	goroutines int
	conns      int
	keys       int
	contended  bool
	duration   time.Duration
	warmup     time.Duration
	ttl        time.Duration
	json       bool
	cpuprofile string
	keyFile    string // seal every datagram with these keys (client and embedded server)
	sealed     bool   // with a fresh random key

	vs           []string // peers to compare with, in order
	plot         string
	sweepD       time.Duration
	installRedis bool
	etcdFsync    bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.addr, "addr", "", "netmutex server to load instead of the embedded one (host:port)")
	fs.IntVar(&o.goroutines, "c", 256, "goroutines")
	fs.IntVar(&o.conns, "conns", 1, "client connections (NetMutex instances); goroutines are spread over them")
	fs.IntVar(&o.keys, "keys", 0, "key space; 0 means one key per goroutine (every pair granted)")
	fs.BoolVar(&o.contended, "contended", false, "every goroutine on one key: acquisitions/s, refusals/s and the wait for the key")
	fs.DurationVar(&o.duration, "d", 10*time.Second, "measured duration")
	fs.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "load before measuring, not counted")
	fs.DurationVar(&o.ttl, "ttl", 10*time.Second, "lock TTL (longer than any pair takes)")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the run (client and embedded server) to this file")
	fs.StringVar(&o.keyFile, "key-file", "", "seal every datagram with the keys of this file (client, and the embedded server)")
	fs.BoolVar(&o.sealed, "sealed", false, "seal every datagram with a fresh random key (client and embedded server)")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON on stdout (progress stays on stderr)")
	vs := fs.String("vs", "", "compare with these systems, in turns, same workload: redis (= rueidis,goredis), rueidis, goredis, etcd")
	fs.StringVar(&o.plot, "plot", "", "write a chart (.png or .svg): pairs/s against goroutines 1..256 for every system, latency at 64")
	fs.DurationVar(&o.sweepD, "sweep-d", 2*time.Second, "measured duration of each point of the -plot sweep")
	fs.BoolVar(&o.installRedis, "install-redis", true, "run bench/install-redis.sh (apt-get) when redis-server is missing")
	fs.BoolVar(&o.etcdFsync, "etcd-fsync", true, "etcd fsyncs its log (its default); false sets UnsafeNoFsync")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: go run ./bench [flags]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	switch {
	case o.goroutines < 1:
		return nil, fmt.Errorf("-c must be at least 1")
	case o.conns < 1:
		return nil, fmt.Errorf("-conns must be at least 1")
	case o.keys < 0:
		return nil, fmt.Errorf("-keys must not be negative")
	case o.duration <= 0:
		return nil, fmt.Errorf("-d must be positive")
	case o.warmup < 0:
		return nil, fmt.Errorf("-warmup must not be negative")
	case o.ttl < time.Millisecond:
		return nil, fmt.Errorf("-ttl must be at least 1ms")
	}
	if o.sweepD <= 0 {
		return nil, fmt.Errorf("-sweep-d must be positive")
	}
	if o.plot != "" && !strings.HasSuffix(o.plot, ".png") && !strings.HasSuffix(o.plot, ".svg") {
		return nil, fmt.Errorf("-plot: file name must end in .png or .svg")
	}
	if o.sealed && o.keyFile != "" {
		return nil, fmt.Errorf("-sealed and -key-file: choose one")
	}
	var err error
	if o.vs, err = parseVs(*vs); err != nil {
		return nil, err
	}
	return o, nil
}

func main() {
	if err := mainErr(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if err == flag.ErrHelp {
			return
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// report is the whole output, also as JSON.
type report struct {
	Machine machine   `json:"machine"`
	Results []*result `json:"results"`
	Sweep   []*result `json:"sweep,omitempty"`
	Skipped []skip    `json:"skipped,omitempty"`
	Plot    string    `json:"plot,omitempty"`
}

func mainErr(args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	rep := &report{Machine: describeMachine()}
	// Human output goes to stdout, unless stdout is for JSON.
	human := stdout
	if o.json {
		human = stderr
	}
	printMachine(human, rep.Machine)
	fmt.Fprintf(human, "workload: %s\n\n", describeWorkload(o))

	if len(o.vs) == 0 && o.plot == "" {
		// The plain run: netmutex alone, every figure.
		sys, err := startNetmutex(o)
		if err != nil {
			return err
		}
		cache := &lockerCache{sys: sys}
		r, err := runCached(cache, o.workload(o.goroutines, o.duration), human)
		cerr := sys.close()
		if err != nil {
			return err
		}
		if cerr != nil {
			fmt.Fprintln(stderr, "bench: closing netmutex:", cerr)
		}
		r.Conns = o.conns
		rep.Results = append(rep.Results, r)
		if o.json {
			return writeJSON(stdout, rep)
		}
		fmt.Fprintln(stdout)
		printResult(stdout, r)
		return nil
	}

	fmt.Fprintf(human, "comparing netmutex with %s; about %v of load in all\n\n", orNone(o.vs), o.estimate().Round(time.Second))
	if err := compare(o, rep, human); err != nil {
		return err
	}
	if o.plot != "" {
		if err := writePlot(o.plot, rep); err != nil {
			fmt.Fprintln(stderr, "bench: -plot:", err)
		} else {
			rep.Plot = o.plot
			fmt.Fprintf(human, "chart written to %s\n", o.plot)
		}
	}
	if o.json {
		return writeJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "\n== %s\n", describeWorkload(o))
	printComparison(stdout, rep.Results, rep.Skipped)
	if len(rep.Sweep) > 0 {
		fmt.Fprintf(stdout, "\n== sweep: %v measured per point, %s\n", o.sweepD, keysWord(o))
		printSweep(stdout, rep.Sweep)
	}
	return nil
}

func writeJSON(w io.Writer, rep *report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func orNone(vs []string) string {
	if len(vs) == 0 {
		return "nothing (netmutex alone)"
	}
	return strings.Join(vs, ", ")
}

func keysWord(o *options) string {
	switch {
	case o.contended:
		return "one key for all (contended)"
	case o.keys == 0:
		return "one key per goroutine"
	}
	return fmt.Sprintf("%d keys", o.keys)
}

// workload is the load of one run with n goroutines for d.
func (o *options) workload(n int, d time.Duration) workload {
	keys := o.keys
	if keys == 0 {
		keys = n // one key per goroutine
	}
	return workload{
		goroutines: n,
		keys:       keys,
		contended:  o.contended,
		duration:   d,
		warmup:     o.warmup,
		prefix:     "bench:" + runID() + ":",
	}
}

// runID tells this run's keys from those of any other run on an external server.
func runID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func describeWorkload(o *options) string {
	keys := fmt.Sprintf("%d keys", o.keys)
	switch {
	case o.contended:
		keys = "ONE key for all (contended)"
	case o.keys == 0 || o.keys == o.goroutines:
		keys = fmt.Sprintf("%d keys", o.goroutines)
		keys += " (one per goroutine: every lock granted)"
	case o.keys > o.goroutines:
		keys += " (each goroutine cycles over its own)"
	default:
		keys += " (shared: some locks refused)"
	}
	return fmt.Sprintf("%d goroutines over %d connection(s), %s, TTL %v; lock then unlock at once, no pause; %v warm-up, then %v measured",
		o.goroutines, o.conns, keys, o.ttl, o.warmup, o.duration)
}

func printMachine(w io.Writer, m machine) {
	fmt.Fprintf(w, "machine: nproc %d, %s, Linux %s, %s, GOMAXPROCS %d\n", m.NumCPU, m.CPU, m.Kernel, m.Go, m.GOMAXPROCS)
}

// printResult prints one system's result as a two-column table.
func printResult(w io.Writer, r *result) {
	row := func(name, value, note string) {
		line := fmt.Sprintf("  %-26s %20s", name, value)
		if note != "" {
			line += "   " + note
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintf(w, "%s: %s\n", r.System, r.Note)
	row("lock operations/s", thousands(r.OpsPerSec), "lock attempts + unlocks, each one request")
	if r.Contended {
		row("acquisitions/s", thousands(r.PairsPerSec), "granted locks, each unlocked at once")
		row("refusals/s", thousands(r.RefusalsPerSec), "lock attempts refused: key held by another goroutine")
	} else {
		row("lock+unlock pairs/s", thousands(r.PairsPerSec), "")
		if r.Refusals > 0 {
			row("refusals/s", thousands(r.RefusalsPerSec), "keys shared between goroutines")
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
	row("allocations/operation", fmt.Sprintf("%.2f", r.AllocsPerOp), allocsNote(r))
	row("CPU s/million operations", fmt.Sprintf("%.2f", r.CPUPerMop), "user+sys of "+r.CPUWhat)
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
	row("measured", fmt.Sprintf("%.2fs", r.Seconds), fmt.Sprintf("%s operations, %s pairs", thousands(float64(r.Ops)), thousands(float64(r.Pairs))))
}

func allocsNote(r *result) string {
	if r.System == "netmutex" && r.Transport != nil && r.Transport.HasServer {
		return "whole process: client and embedded server"
	}
	if strings.HasPrefix(r.System, "etcd") {
		return "whole process: client and embedded etcd"
	}
	if strings.HasPrefix(r.System, "redis") {
		return "client only (redis-server is another process)"
	}
	return "client"
}

// us formats microseconds.
func us(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f s", v/1e6)
	case v >= 10000:
		return fmt.Sprintf("%.1f ms", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.2f ms", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f µs", v)
	default:
		return fmt.Sprintf("%.1f µs", v)
	}
}

// thousands formats v rounded, with commas.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
