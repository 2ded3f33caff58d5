package load

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"time"

	"github.com/netmutex/netmutex"
)

// Options are the flags every command of the bench shares: the workload, and how
// netmutex is reached. Register adds them to a FlagSet; Check validates them after Parse.
type Options struct {
	Addr       string // an external netmutex server; "" starts an embedded one
	Goroutines int
	Conns      int
	Keys       int // key space; 0: one key per goroutine
	Contended  bool
	Duration   time.Duration
	Warmup     time.Duration
	TTL        time.Duration
	JSON       bool
	CPUProfile string
	Trace      string        // an execution trace of the measured run (go tool trace)
	SpinWait   time.Duration // netmutex.Options.SpinWait, and the embedded server's
	KeyFile    string        // seal every datagram with these keys (client and embedded server)
	Sealed     bool          // with a fresh random key
}

// Register adds the shared flags to fs.
func (o *Options) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.Addr, "addr", "", "netmutex server to load instead of the embedded one (host:port)")
	fs.IntVar(&o.Goroutines, "c", 256, "goroutines")
	fs.IntVar(&o.Conns, "conns", 1, "client connections (NetMutex instances, or each peer's clients); goroutines are spread over them")
	fs.IntVar(&o.Keys, "keys", 0, "key space; 0 means one key per goroutine (every pair granted)")
	fs.BoolVar(&o.Contended, "contended", false, "every goroutine on one key: acquisitions/s, refusals/s and the wait for the key")
	fs.DurationVar(&o.Duration, "d", 10*time.Second, "measured duration")
	fs.DurationVar(&o.Warmup, "warmup", 500*time.Millisecond, "load before measuring, not counted")
	fs.DurationVar(&o.TTL, "ttl", 10*time.Second, "lock TTL (longer than any pair takes)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the run (client and embedded server) to this file")
	fs.StringVar(&o.Trace, "trace", "", "write an execution trace of the run (client and embedded server) to this file (go tool trace): where goroutines wait")
	fs.DurationVar(&o.SpinWait, "spin-wait", 0, "netmutex clients (and the embedded server) poll the socket this long after each reply before sleeping (netmutex.Options.SpinWait): lower latency for few callers, more CPU; 0: off")
	fs.StringVar(&o.KeyFile, "key-file", "", "seal every datagram with the keys of this file (client, and the embedded server)")
	fs.BoolVar(&o.Sealed, "sealed", false, "seal every datagram with a fresh random key (client and embedded server)")
	fs.BoolVar(&o.JSON, "json", false, "print the result as JSON on stdout (progress stays on stderr)")
}

// Check returns what is wrong with the parsed flags, naming the flag.
func (o *Options) Check() error {
	switch {
	case o.Goroutines < 1:
		return errors.New("-c must be at least 1")
	case o.Conns < 1:
		return errors.New("-conns must be at least 1")
	case o.Keys < 0:
		return errors.New("-keys must not be negative")
	case o.Duration <= 0:
		return errors.New("-d must be positive")
	case o.SpinWait < 0 || o.SpinWait > netmutex.MaxSpinWait:
		return fmt.Errorf("-spin-wait must be between 0 and %v", netmutex.MaxSpinWait)
	case o.Warmup < 0:
		return errors.New("-warmup must not be negative")
	case o.TTL < time.Millisecond:
		return errors.New("-ttl must be at least 1ms")
	case o.Sealed && o.KeyFile != "":
		return errors.New("-sealed and -key-file: choose one")
	}
	return nil
}

// Workload is the load of one run with n goroutines for d.
func (o *Options) Workload(n int, d time.Duration) Workload {
	keys := o.Keys
	if keys == 0 {
		keys = n // one key per goroutine
	}
	return Workload{
		Goroutines: n,
		Keys:       keys,
		Contended:  o.Contended,
		Duration:   d,
		Warmup:     o.Warmup,
		Prefix:     "bench:" + RunID() + ":",
	}
}

// KeysWord says in a few words how the keys are shared.
func (o *Options) KeysWord() string {
	switch {
	case o.Contended:
		return "one key for all (contended)"
	case o.Keys == 0:
		return "one key per goroutine"
	}
	return fmt.Sprintf("%d keys", o.Keys)
}

// DescribeWorkload says in a line what every run does.
func (o *Options) DescribeWorkload() string {
	keys := fmt.Sprintf("%d keys", o.Keys)
	switch {
	case o.Contended:
		keys = "ONE key for all (contended)"
	case o.Keys == 0 || o.Keys == o.Goroutines:
		keys = fmt.Sprintf("%d keys", o.Goroutines)
		keys += " (one per goroutine: every lock granted)"
	case o.Keys > o.Goroutines:
		keys += " (each goroutine cycles over its own)"
	default:
		keys += " (shared: some locks refused)"
	}
	return fmt.Sprintf("%d goroutines over %d connection(s), %s, TTL %v; lock then unlock at once, no pause; %v warm-up, then %v measured",
		o.Goroutines, o.Conns, keys, o.TTL, o.Warmup, o.Duration)
}

// StartCPUProfile starts the -cpuprofile profile and the -trace trace, if any; stop
// ends them.
func (o *Options) StartCPUProfile() (stop func(), err error) {
	stopProfile, err := startTo(o.CPUProfile, pprof.StartCPUProfile, pprof.StopCPUProfile)
	if err != nil {
		return nil, err
	}
	stopTrace, err := startTo(o.Trace, trace.Start, trace.Stop)
	if err != nil {
		stopProfile()
		return nil, err
	}
	return func() { stopTrace(); stopProfile() }, nil
}

// startTo starts a recording into the file named path, unless path is empty.
func startTo(path string, start func(io.Writer) error, stop func()) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { stop(); f.Close() }, nil
}

// RunID tells this run's keys from those of any other run on an external server.
func RunID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// LockerCache holds the lockers of goroutines 0..n-1 of a system, made once and reused
// by every later run of the same system.
type LockerCache struct {
	Sys System
	ls  []Locker
}

// Get returns the lockers of goroutines 0..n-1, making those not made yet.
func (c *LockerCache) Get(n int) ([]Locker, error) {
	for g := len(c.ls); g < n; g++ {
		l, err := c.Sys.NewLocker(g)
		if err != nil {
			return nil, fmt.Errorf("%s: locker %d: %w", c.Sys.Name(), g, err)
		}
		c.ls = append(c.ls, l)
	}
	return c.ls[:n], nil
}

// Run runs wl on the cached lockers.
func (c *LockerCache) Run(wl Workload, progress io.Writer) (*Result, error) {
	ls, err := c.Get(wl.Goroutines)
	if err != nil {
		return nil, err
	}
	return Run(c.Sys, ls, wl, progress)
}
