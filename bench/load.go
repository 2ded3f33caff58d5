package main

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

// system is one lock service under test: netmutex or a peer. It is set up before a run
// (server started, connections opened) and closed after it.
type system interface {
	// name is what the tables call it.
	name() string
	// newLocker returns the locker for goroutine g; it uses connection g % conns. It is
	// called before the load starts, never in the measured loop.
	newLocker(g int) (locker, error)
	// close releases everything the system set up.
	close() error
}

// locker is one goroutine's handle on a system: it holds at most one lock at a time.
// Every system runs the identical loop over it.
type locker interface {
	// lock tries to take key once, without waiting: ok is false when another holder has
	// it.
	lock(ctx context.Context, key string) (ok bool, err error)
	// unlock releases the lock taken by the last successful lock.
	unlock(ctx context.Context) error
}

// Optional interfaces of a system, for the report.
type (
	// transporter reports frames and syscalls: netmutex only.
	transporter interface{ transport() transport }
	// outOfProcess is a system whose server runs in another process; its CPU time is
	// added to this process's.
	outOfProcess interface{ serverCPU() (time.Duration, bool) }
	// noter says in a line how the system was set up.
	noter interface{ note() string }
)

// transport holds the netmutex counters that show batching, both sides. hasServer is
// false against an external server.
type transport struct {
	FramesOut, DatagramsOut, SendCalls    uint64 // client
	FramesIn, DatagramsIn, RecvCalls      uint64 // client
	Requests, DatagramsInSrv, SyscallsIn  uint64 // server
	Replies, DatagramsOutSrv, SyscallsOut uint64 // server
	hasServer                             bool
}

func (a transport) sub(b transport) transport {
	return transport{
		a.FramesOut - b.FramesOut, a.DatagramsOut - b.DatagramsOut, a.SendCalls - b.SendCalls,
		a.FramesIn - b.FramesIn, a.DatagramsIn - b.DatagramsIn, a.RecvCalls - b.RecvCalls,
		a.Requests - b.Requests, a.DatagramsInSrv - b.DatagramsInSrv, a.SyscallsIn - b.SyscallsIn,
		a.Replies - b.Replies, a.DatagramsOutSrv - b.DatagramsOutSrv, a.SyscallsOut - b.SyscallsOut,
		a.hasServer,
	}
}

// workload is what every system is run with.
type workload struct {
	goroutines int
	keys       int  // key space; goroutine g uses keys g, g+c, g+2c, ... modulo keys
	contended  bool // every goroutine on one key
	duration   time.Duration
	warmup     time.Duration // run before measuring, not counted
	prefix     string        // key prefix, unique per run
}

// counters are one goroutine's running totals, read by the progress printer. Padded so
// that no two goroutines write one cache line.
type counters struct {
	ops, pairs, refusals, errors atomic.Uint64
	_                            [64 - 32]byte
}

// worker is one goroutine's state; its histograms are touched by it alone until it
// ends.
type worker struct {
	c        counters
	pair     hist // lock+unlock of a granted pair
	wait     hist // contended: first attempt to grant
	firstErr atomic.Pointer[error]
}

// Phases of a run.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// result is one run of one system.
type result struct {
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

	Pair latency `json:"pair_latency_us"`
	Wait latency `json:"wait_us"` // contended only: first attempt until granted

	AllocsPerOp float64 `json:"allocs_per_op"`
	CPUPerMop   float64 `json:"cpu_sec_per_million_ops"`
	CPUWhat     string  `json:"cpu_includes"`

	Transport *transportReport `json:"transport,omitempty"`

	pairHist, waitHist *hist
}

type latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
}

func latencyOf(h *hist) latency {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return latency{
		P50: us(h.quantile(0.5)), P90: us(h.quantile(0.9)), P99: us(h.quantile(0.99)),
		P999: us(h.quantile(0.999)), Mean: us(h.mean()), Max: us(time.Duration(h.max)),
	}
}

type transportReport struct {
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

func (t transport) report() *transportReport {
	return &transportReport{
		ClientFramesPerDatagramOut: ratio(t.FramesOut, t.DatagramsOut),
		ClientDatagramsPerSendCall: ratio(t.DatagramsOut, t.SendCalls),
		ClientFramesPerDatagramIn:  ratio(t.FramesIn, t.DatagramsIn),
		ClientDatagramsPerRecvCall: ratio(t.DatagramsIn, t.RecvCalls),
		ServerFramesPerDatagramIn:  ratio(t.Requests, t.DatagramsInSrv),
		ServerDatagramsPerRecvCall: ratio(t.DatagramsInSrv, t.SyscallsIn),
		ServerFramesPerDatagramOut: ratio(t.Replies, t.DatagramsOutSrv),
		ServerDatagramsPerSendCall: ratio(t.DatagramsOutSrv, t.SyscallsOut),
		HasServer:                  t.hasServer,
	}
}

// snapshot is what is read at each phase boundary.
type snapshot struct {
	at                           time.Time
	ops, pairs, refusals, errors uint64
	mallocs                      uint64
	cpu                          time.Duration
	tr                           transport
}

func take(sys system, ws []*worker) snapshot {
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
	s.cpu = selfCPU()
	if o, ok := sys.(outOfProcess); ok {
		if d, ok := o.serverCPU(); ok {
			s.cpu += d
		}
	}
	if t, ok := sys.(transporter); ok {
		s.tr = t.transport()
	}
	s.at = time.Now()
	return s
}

// stopGrace is how long the goroutines get to finish their last pair after the
// measured time; a system that hangs longer is reported and left behind.
const stopGrace = 10 * time.Second

// run drives wl against sys: one goroutine per locker (len(lockers) ==
// wl.goroutines), each in a loop of lock (and, when granted, unlock) for wl.warmup +
// wl.duration. progress, if not nil, gets a line per second.
func run(sys system, lockers []locker, wl workload, progress io.Writer) (*result, error) {
	keys := make([]string, max(wl.keys, 1))
	if wl.contended {
		keys = keys[:1]
	}
	for i := range keys {
		keys[i] = wl.prefix + strconv.Itoa(i)
	}
	ws := make([]*worker, wl.goroutines)
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
			loop(ws[g], lockers[g], keys, g, wl.goroutines, wl.contended, &phase)
		}()
	}

	begin := time.Now()
	close(start)
	if wl.warmup > 0 {
		time.Sleep(wl.warmup)
	}
	s0 := take(sys, ws)
	phase.Store(phaseMeasure)

	// One progress line a second; the last partial second is not printed.
	prev := s0
	end := s0.at.Add(wl.duration)
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
		if wl.contended {
			what = "acquisitions/s"
		}
		line := fmt.Sprintf("  %-14s %5.1fs  %s %s this second, %s so far",
			sys.name(), all, thousands(float64(cur.pairs-prev.pairs)/sec), what, thousands(float64(cur.pairs-s0.pairs)/all))
		if wl.contended {
			line += fmt.Sprintf(", %s refusals/s", thousands(float64(cur.refusals-prev.refusals)/sec))
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
			sys.name(), stopGrace, time.Since(begin).Round(time.Second))
	}

	r := &result{
		System:     sys.name(),
		Goroutines: wl.goroutines,
		Keys:       len(keys),
		Contended:  wl.contended,
		Seconds:    s1.at.Sub(s0.at).Seconds(),
		Ops:        s1.ops - s0.ops,
		Pairs:      s1.pairs - s0.pairs,
		Refusals:   s1.refusals - s0.refusals,
		Errors:     s1.errors - s0.errors,
		pairHist:   new(hist),
		waitHist:   new(hist),
	}
	if n, ok := sys.(noter); ok {
		r.Note = n.note()
	}
	for _, w := range ws {
		r.pairHist.merge(&w.pair)
		r.waitHist.merge(&w.wait)
		if e := w.firstErr.Load(); e != nil && r.FirstErr == "" {
			r.FirstErr = (*e).Error()
		}
	}
	r.OpsPerSec = float64(r.Ops) / r.Seconds
	r.PairsPerSec = float64(r.Pairs) / r.Seconds
	r.RefusalsPerSec = float64(r.Refusals) / r.Seconds
	r.Pair = latencyOf(r.pairHist)
	if wl.contended {
		r.Wait = latencyOf(r.waitHist)
	}
	r.AllocsPerOp = ratio(s1.mallocs-s0.mallocs, r.Ops)
	r.CPUPerMop = (s1.cpu - s0.cpu).Seconds() / (float64(r.Ops) / 1e6)
	if r.Ops == 0 {
		r.CPUPerMop = 0
	}
	if _, ok := sys.(outOfProcess); ok {
		r.CPUWhat = "this process (client) + the server process"
	} else {
		r.CPUWhat = "this process: client and embedded server"
	}
	if _, ok := sys.(transporter); ok {
		r.Transport = s1.tr.sub(s0.tr).report()
	}
	return r, nil
}

// loop is one goroutine's load: try the next key; when granted, unlock it at once.
// Histograms are filled only while measuring; counters always (the run subtracts the
// warm-up). In contended mode a goroutine that was refused tries again at once, and its
// wait runs from its first refused attempt to the grant.
func loop(w *worker, l locker, keys []string, g, c int, contended bool, phase *atomic.Int32) {
	ctx := context.Background()
	next := g % len(keys)
	var waitFrom time.Time
	for {
		ph := phase.Load()
		if ph == phaseStop {
			return
		}
		key := keys[next]
		next += c
		if next >= len(keys) {
			next %= len(keys)
		}
		t0 := time.Now()
		ok, err := l.lock(ctx, key)
		w.c.ops.Add(1)
		if err != nil {
			w.fail(err)
			continue
		}
		if !ok {
			w.c.refusals.Add(1)
			if waitFrom.IsZero() {
				waitFrom = t0
			}
			continue
		}
		var granted time.Time
		if contended {
			granted = time.Now()
		}
		err = l.unlock(ctx)
		t1 := time.Now()
		w.c.ops.Add(1)
		if err != nil {
			w.fail(err)
			continue
		}
		w.c.pairs.Add(1)
		if ph == phaseMeasure {
			w.pair.record(t1.Sub(t0))
			if contended {
				if waitFrom.IsZero() {
					waitFrom = t0
				}
				w.wait.record(granted.Sub(waitFrom))
			}
		}
		waitFrom = time.Time{}
	}
}

// fail counts an error, keeps the first, and pauses a little so that a broken system
// is not hammered.
func (w *worker) fail(err error) {
	w.c.errors.Add(1)
	w.firstErr.CompareAndSwap(nil, &err)
	time.Sleep(time.Millisecond)
}
