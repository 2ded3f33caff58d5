// Command scheduler is a job scheduler as the users of netmutex write one: a pool of
// workers takes jobs by id, runs each job under a lock of its own (nm.Hold on
// "job:<id>"), and writes the job's result to a store that checks the lock's fencing
// token, so that a worker that lost its lock without knowing it cannot overwrite the
// work of the one that took the job over.
//
// All workers in one process, with an in-memory store (or -store DIR):
//
//	go run ./cmd/netmutexd &                                # 127.0.0.1:15663
//	go run ./examples/scheduler -workers 4 -jobs 20
//
// Or one worker per process, sharing a store directory, so that one can be killed
// mid-job (kill -9): its job is taken over by another worker once its lock expires,
// with a higher fence, and the store rejects anything written with the old one:
//
//	go run ./examples/scheduler -store /tmp/jobs -worker-id w1 &
//	go run ./examples/scheduler -store /tmp/jobs -worker-id w2 &
//
// Every event is a line on standard output: "<time> <worker> <event> job=<id> ..." with
// the events start, done, wait (queueing for a job another worker started), skip
// (another worker did it), later (busy: try again later), lost (the lock was lost
// mid-job: stop, the job is someone else's now) and stale (the store refused our write).
// A worker exits 0 once the store has every job done.
//
// tests/scheduler_test.go runs it against netmutexd with one worker killed mid-job.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/examples/scheduler/store"
)

type config struct {
	addr    string
	keyFile string
	workers int
	jobs    int
	ttl     time.Duration
	work    time.Duration
	dir     string
	id      string
}

func main() {
	var c config
	flag.StringVar(&c.addr, "addr", "127.0.0.1:15663", "netmutexd `address`")
	flag.StringVar(&c.keyFile, "key-file", "", "pre-shared keys `file` of a netmutexd run with -key-file")
	flag.IntVar(&c.workers, "workers", 4, "workers in this process (ignored with -worker-id)")
	flag.IntVar(&c.jobs, "jobs", 20, "jobs to run: ids 1..`N`")
	flag.DurationVar(&c.ttl, "ttl", 2*time.Second, "lock TTL of a job; Hold renews it every third")
	flag.DurationVar(&c.work, "work", 500*time.Millisecond, "how long processing a job takes")
	flag.StringVar(&c.dir, "store", "", "job store `directory`, shared by worker processes; empty: in memory (workers of this process only)")
	flag.StringVar(&c.id, "worker-id", "", "run a single worker named `id` in this process (needs -store): the mode to run each worker as a process")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "scheduler:", err)
		os.Exit(1)
	}
}

func run(c config) error {
	if c.jobs < 1 || c.workers < 1 || c.ttl <= 0 || c.work < 0 {
		return errors.New("-jobs and -workers must be at least 1, -ttl positive")
	}
	if c.id != "" && c.dir == "" {
		return errors.New("-worker-id needs -store DIR: workers in other processes must share the store")
	}
	var st store.Store = store.NewMemory()
	if c.dir != "" {
		d, err := store.OpenDir(c.dir)
		if err != nil {
			return err
		}
		st = d
	}
	jobs := make([]string, c.jobs)
	for i := range jobs {
		jobs[i] = strconv.Itoa(i + 1)
	}
	// SIGINT/SIGTERM end the workers' contexts: Hold then ends fn's context, fn stops,
	// and the lock is released.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if c.id != "" {
		w := &worker{id: c.id, cfg: c, store: st, jobs: order(c.id, jobs)}
		return w.run(ctx)
	}
	began := time.Now()
	errs := make([]error, c.workers)
	var wg sync.WaitGroup
	for i := range c.workers {
		id := "w" + strconv.Itoa(i+1)
		w := &worker{id: id, cfg: c, store: st, jobs: order(id, jobs)}
		wg.Go(func() { errs[i] = w.run(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return summary(st, jobs, time.Since(began))
}

// order is the order in which worker id walks the jobs: its own shuffle, so that workers
// that do not know one another (processes) seldom reach the same job at the same time,
// and one that lost a race for a job (it queued behind the winner, then found the job
// done) seldom follows the winner to its next job too.
func order(id string, jobs []string) []string {
	h := fnv.New64a()
	h.Write([]byte(id))
	own := slices.Clone(jobs)
	rand.New(rand.NewPCG(h.Sum64(), 0)).Shuffle(len(own), func(i, j int) { own[i], own[j] = own[j], own[i] })
	return own
}

// worker takes jobs until the store has them all done.
type worker struct {
	id    string
	cfg   config
	store store.Store
	jobs  []string // in this worker's order
	nm    *netmutex.NetMutex
}

func (w *worker) run(ctx context.Context) error {
	defer w.closeSession()
	for pass := 0; ; pass++ {
		left := 0
		for _, job := range w.jobs {
			rec, ok, err := w.store.Get(job)
			if err != nil {
				return err
			}
			if ok && rec.State == store.Done {
				continue // a cheap check before queueing for the lock; checked again under it
			}
			left++
			// The first pass takes only jobs nobody has started, rather than queue behind a
			// worker busy with one. Later passes queue for the rest: a started job whose
			// worker died is retaken when its lock expires, one whose worker is alive is
			// found done. (A heuristic for speed only: the lock and the fence are what
			// make it correct.)
			if ok && rec.State == store.Started {
				if pass == 0 {
					continue
				}
				w.event("wait", job, 0, fmt.Errorf("started by %s with fence %d: queueing for its lock", rec.Worker, rec.Fence))
			}
			if err := w.runJob(ctx, job); err != nil {
				return err
			}
		}
		if left == 0 {
			return nil // a pass found every job done
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// session returns the worker's NetMutex, opening one if it has none.
//
// Each worker has a NetMutex of its own, never one shared by the pool: isolation is per
// session. When one lock of a session expires while the session is still connected (its
// holder stalled), the server isolates the whole session, and every lock of every
// goroutine using that NetMutex is lost. Workers that must fail independently need
// separate sessions.
func (w *worker) session(ctx context.Context) (*netmutex.NetMutex, error) {
	if w.nm != nil {
		return w.nm, nil
	}
	host, _ := os.Hostname()
	nm, err := netmutex.OpenContext(ctx, []string{w.cfg.addr}, &netmutex.Options{
		KeyFile: w.cfg.keyFile,
		// What the server's isolation command needs to stop this worker.
		IsolationInfo: fmt.Sprintf("scheduler worker %s host %s pid %d", w.id, host, os.Getpid()),
	})
	if err != nil {
		return nil, err
	}
	w.nm = nm
	return nm, nil
}

func (w *worker) closeSession() {
	if w.nm == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	w.nm.CloseContext(ctx) // the session ends and the server releases what it still held
	w.nm = nil
}

// runJob runs one job under its lock. It returns an error only when the worker must stop.
func (w *worker) runJob(ctx context.Context, job string) error {
	nm, err := w.session(ctx)
	if err != nil {
		return err
	}
	var fence uint64
	// Hold waits in the server's queue for the key, renews it while fn runs, ends fn's
	// context before the server could let the lock expire, and unlocks when fn returns.
	err = nm.Hold(ctx, "job:"+job, w.cfg.ttl, func(ctx context.Context, l *netmutex.Lock) error {
		fence = l.FenceID()
		return w.process(ctx, job, fence)
	})
	switch {
	case err == nil, errors.Is(err, errSkipped):
		return nil
	case errors.Is(err, store.ErrStaleFence):
		// The store has seen a newer holder of this job: it is not ours any more.
		w.event("stale", job, fence, err)
		return nil
	case errors.Is(err, netmutex.ErrIsolated):
		// "You no longer hold it, stop" (ErrIsolated, ErrLockLost, ErrLeaseExpired): the
		// lease ran out or the server isolated this session. The job is someone else's
		// now, and this session is (or is about to be) isolated: every later call on it
		// would fail, so start a new one for the next job.
		w.event("lost", job, fence, err)
		w.closeSession()
		return nil
	case errors.Is(err, netmutex.ErrLocked):
		// "Someone may hold it, try later": the server's start-up lock-delay, or too many
		// waiters. A later pass comes back to the job.
		w.event("later", job, fence, err)
		return nil
	case ctx.Err() != nil:
		return ctx.Err() // interrupted
	default:
		return fmt.Errorf("%s: job %s: %w", w.id, job, err)
	}
}

var errSkipped = errors.New("job already done")

// process is the job itself, run while this worker holds "job:"+job with fence. ctx ends
// when the lock can no longer be counted on (the lease ran out, the session was isolated,
// the worker is interrupted): the job must then stop at once, and return why.
func (w *worker) process(ctx context.Context, job string, fence uint64) error {
	// Checked again under the lock: the job may have been finished by the worker that
	// held the lock before us.
	if rec, ok, err := w.store.Get(job); err != nil {
		return err
	} else if ok && rec.State == store.Done {
		w.event("skip", job, fence, fmt.Errorf("done by %s with fence %d", rec.Worker, rec.Fence))
		return errSkipped
	}
	// Every write carries the fence. The first one also claims the job in the store: a
	// holder that lost its lock meanwhile finds its writes refused from here on.
	if err := w.store.Put(job, store.Write{Fence: fence, Worker: w.id, State: store.Started, At: time.Now()}); err != nil {
		return err
	}
	w.event("start", job, fence, nil)

	// The work: here a sleep that stops when the lock does.
	select {
	case <-time.After(w.cfg.work):
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	// The lease may still end between the check above and the write: the fence is what
	// protects the store then, not the check.
	result := fmt.Sprintf("job %s processed by %s", job, w.id)
	if err := w.store.Put(job, store.Write{Fence: fence, Worker: w.id, State: store.Done, Result: result, At: time.Now()}); err != nil {
		return err
	}
	w.event("done", job, fence, nil)
	return nil
}

var outMu sync.Mutex

// event prints one line: "<time> <worker> <event> job=<id> fence=<fence> [<detail>]".
func (w *worker) event(what, job string, fence uint64, detail error) {
	outMu.Lock()
	defer outMu.Unlock()
	line := fmt.Sprintf("%s %s %s job=%s fence=%d", time.Now().Format("15:04:05.000"), w.id, what, job, fence)
	if detail != nil {
		line += " (" + detail.Error() + ")"
	}
	fmt.Println(line)
}

// summary prints, for each job, who finished it and how many writes the store accepted
// and refused.
func summary(st store.Store, jobs []string, took time.Duration) error {
	perWorker := map[string]int{}
	for _, job := range jobs {
		rec, ok, err := st.Get(job)
		if err != nil {
			return err
		}
		if !ok || rec.State != store.Done {
			return fmt.Errorf("job %s not done", job)
		}
		perWorker[rec.Worker]++
		fmt.Printf("job %s: done by %s, fence %d, %d writes accepted, %d refused\n",
			job, rec.Worker, rec.Fence, len(rec.Writes), len(rec.Rejected))
	}
	fmt.Printf("%d jobs done in %v: per worker %v\n", len(jobs), took.Round(time.Millisecond), perWorker)
	return nil
}
