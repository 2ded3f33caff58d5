package load

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// System is one lock service under test: netmutex or a peer. It is set up before a run
// (server started, connections opened) and closed after it.
type System interface {
	// Name is what the tables call it.
	Name() string
	// NewLocker returns the locker for goroutine g; it uses connection g % conns. It is
	// called before the load starts, never in the measured loop.
	NewLocker(g int) (Locker, error)
	// Close releases everything the system set up.
	Close() error
}

// Locker is one goroutine's handle on a system: it holds at most one lock at a time.
// Every system runs the identical loop over it.
type Locker interface {
	// Lock tries to take key once, without waiting: ok is false when another holder has
	// it.
	Lock(ctx context.Context, key string) (ok bool, err error)
	// Unlock releases the lock taken by the last successful Lock.
	Unlock(ctx context.Context) error
}

// Waiter is a Locker that can also wait for a busy key in the server's queue. In
// contended mode the load uses it instead of retrying Lock: each grant is a handoff.
type Waiter interface {
	Acquire(ctx context.Context, key string) error
}

// Optional interfaces of a system, for the report.
type (
	// Transporter reports frames and syscalls: netmutex only.
	Transporter interface{ Transport() Transport }
	// OutOfProcess is a system whose server runs in another process; its CPU time is
	// added to this process's.
	OutOfProcess interface{ ServerCPU() (time.Duration, bool) }
	// Noter says in a line how the system was set up.
	Noter interface{ Note() string }
)

// Transport holds the netmutex counters that show batching, both sides. HasServer is
// false against an external server.
type Transport struct {
	FramesOut, DatagramsOut, SendCalls    uint64 // client
	FramesIn, DatagramsIn, RecvCalls      uint64 // client
	Requests, DatagramsInSrv, SyscallsIn  uint64 // server
	Replies, DatagramsOutSrv, SyscallsOut uint64 // server
	HasServer                             bool
}

func (a Transport) sub(b Transport) Transport {
	return Transport{
		a.FramesOut - b.FramesOut, a.DatagramsOut - b.DatagramsOut, a.SendCalls - b.SendCalls,
		a.FramesIn - b.FramesIn, a.DatagramsIn - b.DatagramsIn, a.RecvCalls - b.RecvCalls,
		a.Requests - b.Requests, a.DatagramsInSrv - b.DatagramsInSrv, a.SyscallsIn - b.SyscallsIn,
		a.Replies - b.Replies, a.DatagramsOutSrv - b.DatagramsOutSrv, a.SyscallsOut - b.SyscallsOut,
		a.HasServer,
	}
}

// Workload is what every system is run with.
type Workload struct {
	Goroutines int
	Keys       int  // key space; goroutine g uses keys g, g+c, g+2c, ... modulo Keys
	Contended  bool // every goroutine on one key
	Duration   time.Duration
	Warmup     time.Duration // run before measuring, not counted
	Prefix     string        // key prefix, unique per run
}

// Phases of a run.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// Result is one run of one system.
type Result struct {
	System     string  `json:"system"`
	Note       string  `json:"note,omitempty"`
	Goroutines int     `json:"goroutines"`
	Conns      int     `json:"conns"`
	Keys       int     `json:"keys"`
	Contended  bool    `json:"contended"`
	Seconds    float64 `json:"seconds"`

	Ops      uint64 `json:"ops"`   // requests: lock attempts and unlocks
	Pairs    uint64 `json:"pairs"` // granted locks, each then unlocked
	Refusals uint64 `json:"refusals"`
	Errors   uint64 `json:"errors"`
	FirstErr string `json:"first_error,omitempty"`

	OpsPerSec      float64 `json:"ops_per_sec"`
	PairsPerSec    float64 `json:"pairs_per_sec"` // = acquisitions/s
	RefusalsPerSec float64 `json:"refusals_per_sec"`

	Pair Latency `json:"pair_latency_us"`
	Wait Latency `json:"wait_us"` // contended only: first attempt until granted
	// Waiting: the contended run used the system's waiting lock (Waiter); Fairness is
	// Jain's index over the goroutines' acquisition counts (1: all equal).
	Waiting  bool    `json:"waiting,omitempty"`
	Fairness float64 `json:"fairness,omitempty"`

	AllocsPerOp float64 `json:"allocs_per_op"`
	CPUPerMop   float64 `json:"cpu_sec_per_million_ops"`
	CPUWhat     string  `json:"cpu_includes"`

	Transport *TransportReport `json:"transport,omitempty"`

	// The merged histograms, for charts.
	PairHist, WaitHist *Hist `json:"-"`
}

// Latency is a distribution in µs.
type Latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
}

func latencyOf(h *Hist) Latency {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return Latency{
		P50: us(h.Quantile(0.5)), P90: us(h.Quantile(0.9)), P99: us(h.Quantile(0.99)),
		P999: us(h.Quantile(0.999)), Mean: us(h.Mean()), Max: us(time.Duration(h.max)),
	}
}

// TransportReport is Transport as ratios.
type TransportReport struct {
	ClientFramesPerDatagramOut float64 `json:"client_frames_per_datagram_out"`
	ClientDatagramsPerSendCall float64 `json:"client_datagrams_per_send_call"`
	ClientFramesPerDatagramIn  float64 `json:"client_frames_per_datagram_in"`
	ClientDatagramsPerRecvCall float64 `json:"client_datagrams_per_recv_call"`
	ServerFramesPerDatagramIn  float64 `json:"server_frames_per_datagram_in,omitempty"`
	ServerDatagramsPerRecvCall float64 `json:"server_datagrams_per_recv_call,omitempty"`
	ServerFramesPerDatagramOut float64 `json:"server_frames_per_datagram_out,omitempty"`
	ServerDatagramsPerSendCall float64 `json:"server_datagrams_per_send_call,omitempty"`
	HasServer                  bool    `json:"has_server"`
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func (t Transport) report() *TransportReport {
	return &TransportReport{
		ClientFramesPerDatagramOut: ratio(t.FramesOut, t.DatagramsOut),
		ClientDatagramsPerSendCall: ratio(t.DatagramsOut, t.SendCalls),
		ClientFramesPerDatagramIn:  ratio(t.FramesIn, t.DatagramsIn),
		ClientDatagramsPerRecvCall: ratio(t.DatagramsIn, t.RecvCalls),
		ServerFramesPerDatagramIn:  ratio(t.Requests, t.DatagramsInSrv),
		ServerDatagramsPerRecvCall: ratio(t.DatagramsInSrv, t.SyscallsIn),
		ServerFramesPerDatagramOut: ratio(t.Replies, t.DatagramsOutSrv),
		ServerDatagramsPerSendCall: ratio(t.DatagramsOutSrv, t.SyscallsOut),
		HasServer:                  t.HasServer,
	}
}

// snapshot is what is read at each phase boundary.
type snapshot struct {
	at                           time.Time
	ops, pairs, refusals, errors uint64
	mallocs                      uint64
	cpu                          time.Duration
	tr                           Transport
}

func take(sys System, ws []*worker) snapshot {
	var s snapshot
	for _, w := range ws {
		s.ops += w.c.ops.Load()
		s.pairs += w.c.pairs.Load()
		s.refusals += w.c.refusals.Load()
		s.errors += w.c.errors.Load()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.mallocs = ms.Mallocs
	s.cpu = SelfCPU()
	if o, ok := sys.(OutOfProcess); ok {
		if d, ok := o.ServerCPU(); ok {
			s.cpu += d
		}
	}
	if t, ok := sys.(Transporter); ok {
		s.tr = t.Transport()
	}
	s.at = time.Now()
	return s
}

// stopGrace is how long the goroutines get to finish their last pair after the
// measured time; a system that hangs longer is reported and left behind.
const stopGrace = 10 * time.Second

// Run drives wl against sys: one goroutine per locker (len(lockers) ==
// wl.Goroutines), each in a loop of lock (and, when granted, unlock) for wl.Warmup +
// wl.Duration. progress, if not nil, gets a line per second.
func Run(sys System, lockers []Locker, wl Workload, progress io.Writer) (*Result, error) {
	keys := make([]string, max(wl.Keys, 1))
	if wl.Contended {
		keys = keys[:1]
	}
	for i := range keys {
		keys[i] = wl.Prefix + strconv.Itoa(i)
	}
	ws := make([]*worker, wl.Goroutines)
	for g := range ws {
		ws[g] = new(worker)
	}

	var phase atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			loop(ws[g], lockers[g], keys, g, wl.Goroutines, wl.Contended, &phase)
		}()
	}

	begin := time.Now()
	close(start)
	if wl.Warmup > 0 {
		time.Sleep(wl.Warmup)
	}
	s0 := take(sys, ws)
	phase.Store(phaseMeasure)

	// One progress line a second; the last partial second is not printed.
	prev := s0
	end := s0.at.Add(wl.Duration)
	for {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		time.Sleep(min(time.Second-now.Sub(s0.at)%time.Second, end.Sub(now)))
		if progress == nil || !time.Now().Before(end) {
			continue
		}
		var cur snapshot
		for _, w := range ws {
			cur.pairs += w.c.pairs.Load()
			cur.refusals += w.c.refusals.Load()
		}
		cur.at = time.Now()
		sec := cur.at.Sub(prev.at).Seconds()
		all := cur.at.Sub(s0.at).Seconds()
		what := "pairs/s"
		if wl.Contended {
			what = "acquisitions/s"
		}
		line := fmt.Sprintf("  %-14s %5.1fs  %s %s this second, %s so far",
			sys.Name(), all, Thousands(float64(cur.pairs-prev.pairs)/sec), what, Thousands(float64(cur.pairs-s0.pairs)/all))
		if wl.Contended {
			line += fmt.Sprintf(", %s refusals/s", Thousands(float64(cur.refusals-prev.refusals)/sec))
		}
		fmt.Fprintln(progress, line)
		prev = cur
	}
	s1 := take(sys, ws)
	phase.Store(phaseStop)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(stopGrace):
		return nil, fmt.Errorf("%s: goroutines still busy %v after the end (started %v ago)",
			sys.Name(), stopGrace, time.Since(begin).Round(time.Second))
	}

	r := &Result{
		System:     sys.Name(),
		Goroutines: wl.Goroutines,
		Keys:       len(keys),
		Contended:  wl.Contended,
		Seconds:    s1.at.Sub(s0.at).Seconds(),
		Ops:        s1.ops - s0.ops,
		Pairs:      s1.pairs - s0.pairs,
		Refusals:   s1.refusals - s0.refusals,
		Errors:     s1.errors - s0.errors,
		PairHist:   new(Hist),
		WaitHist:   new(Hist),
	}
	if n, ok := sys.(Noter); ok {
		r.Note = n.Note()
	}
	for _, w := range ws {
		r.PairHist.Merge(&w.pair)
		r.WaitHist.Merge(&w.wait)
		if e := w.firstErr.Load(); e != nil && r.FirstErr == "" {
			r.FirstErr = (*e).Error()
		}
	}
	r.OpsPerSec = float64(r.Ops) / r.Seconds
	r.PairsPerSec = float64(r.Pairs) / r.Seconds
	r.RefusalsPerSec = float64(r.Refusals) / r.Seconds
	r.Pair = latencyOf(r.PairHist)
	if wl.Contended {
		r.Wait = latencyOf(r.WaitHist)
		r.Fairness = jain(ws)
		_, r.Waiting = lockers[0].(Waiter)
	}
	r.AllocsPerOp = ratio(s1.mallocs-s0.mallocs, r.Ops)
	r.CPUPerMop = (s1.cpu - s0.cpu).Seconds() / (float64(r.Ops) / 1e6)
	if r.Ops == 0 {
		r.CPUPerMop = 0
	}
	if _, ok := sys.(OutOfProcess); ok {
		r.CPUWhat = "this process (client) + the server process"
	} else {
		r.CPUWhat = "this process: client and embedded server"
	}
	if _, ok := sys.(Transporter); ok {
		r.Transport = s1.tr.sub(s0.tr).report()
	}
	return r, nil
}
