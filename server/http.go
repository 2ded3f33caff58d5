// The operators' HTTP server (Config.HTTPAddr): /metrics, /locks, /healthz, /readyz,
// and the requests its handlers make to the loop, which owns the machine.
//
//   - GET /metrics: every netmutex_* figure (collector.go), the Go runtime's and the
//     process's, in the Prometheus text format, from a registry of the server's own.
//   - GET /locks: the held locks as JSON (lockView): at most maxLockRows of them, the
//     first by key; locks_held counts them all and truncated says some were left out.
//   - GET /healthz: 200 once the loop has answered a request through its request
//     channel (within loopAskTimeout), 503 otherwise: the loop is stopped or stuck.
//   - GET /readyz: as /healthz. A single server is ready as soon as its loop serves, its
//     lock-delay included (clients must reach it then: sessions are made, waiting LOCKs
//     queue for the delay's end); the body says how much lock-delay is left. A follower
//     (Config.Redirect) knows its leader by configuration, so it is ready too.

package server

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const (
	// maxLockRows bounds GET /locks: 10,000 rows are about 1 MB of JSON at most, more
	// than an operator reads and little for the server to build.
	maxLockRows = 10_000
	// scanChunk is how many entries of the lock table the loop reads for GET /locks
	// between two batches (a few milliseconds at most): a table of a million keys is
	// read in 16 parts, and the loop never stalls on it for longer than one part.
	scanChunk = 1 << 16
	// loopAskTimeout bounds how long a handler waits for the loop.
	loopAskTimeout = 5 * time.Second
	// loopQueue is the capacity of the loop's request channel; a handler that finds it
	// full answers 503 at once.
	loopQueue = 16
	// httpShutdown bounds how long Close waits for the HTTP requests in progress.
	httpShutdown = 2 * time.Second
)

var errLoopBusy = errors.New("server: the loop has too many requests waiting")

// loopReq is a handler's request to the loop: a ping (locks false: the reply is nil) or
// a snapshot of the held locks. reply is buffered, so the loop never blocks on it.
type loopReq struct {
	locks bool
	reply chan *locksSnap
}

// locksSnap is what the loop answers a request for the locks: the first maxLockRows
// held locks by key (unsorted), and counts.
type locksSnap struct {
	rows     []heldRow
	held     int // locks seen by the scan
	sessions int
	waiters  int
}

// heldRow is a LockRow with its time left, taken against the loop's clock when read.
type heldRow struct {
	LockRow
	expiresIn time.Duration
}

// rowHeap is a max-heap of rows by key: it keeps the smallest keys seen.
type rowHeap []heldRow

func (h rowHeap) Len() int           { return len(h) }
func (h rowHeap) Less(i, j int) bool { return h[i].Key > h[j].Key }
func (h rowHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *rowHeap) Push(x any)        { *h = append(*h, x.(heldRow)) }
func (h *rowHeap) Pop() any          { x := (*h)[len(*h)-1]; *h = (*h)[:len(*h)-1]; return x }

// lockScan is a snapshot of the locks being taken, scanChunk entries per step.
type lockScan struct {
	next    func() (LockRow, bool)
	stop    func()
	rows    rowHeap
	held    int
	waiting []chan *locksSnap
}

// serveRequests answers the handlers' requests and takes a step of the lock scan, if one
// is going on. Called by the loop before each read and between busy batches; with no
// request and no scan it costs a channel length.
func (s *Server) serveRequests() {
	s.serveCluster()
	for len(s.reqs) > 0 {
		req := <-s.reqs
		if !req.locks {
			req.reply <- nil
			continue
		}
		if s.scan == nil {
			next, stop := iter.Pull(s.m.HeldLocks())
			s.scan = &lockScan{next: next, stop: stop}
		}
		s.scan.waiting = append(s.scan.waiting, req.reply)
	}
	if s.scan != nil {
		s.stepScan()
	}
}

// stepScan reads up to scanChunk held locks into the scan, and answers its requests
// once the table is read.
func (s *Server) stepScan() {
	sc, now := s.scan, s.now()
	for range scanChunk {
		r, ok := sc.next()
		if !ok {
			s.endScan(&locksSnap{rows: sc.rows, held: sc.held, sessions: s.m.Sessions(), waiters: s.m.Waiters()})
			return
		}
		sc.held++
		row := heldRow{r, time.Duration(max(r.Deadline-now, 0))}
		switch {
		case len(sc.rows) < maxLockRows:
			heap.Push(&sc.rows, row)
		case r.Key < sc.rows[0].Key:
			sc.rows[0] = row
			heap.Fix(&sc.rows, 0)
		}
	}
}

// endScan answers the scan's requests with snap (nil: the loop is stopping).
func (s *Server) endScan(snap *locksSnap) {
	if s.scan == nil {
		return
	}
	s.scan.stop()
	for _, ch := range s.scan.waiting {
		ch <- snap
	}
	s.scan = nil
}

// ask hands req to the loop, wakes it (its read may block until traffic while the
// machine is idle) and waits for the answer.
func (s *Server) ask(ctx context.Context, req *loopReq) (*locksSnap, error) {
	select {
	case s.reqs <- req:
	case <-s.loopDone:
		return nil, ErrAlreadyClosed
	default:
		return nil, errLoopBusy
	}
	// A read deadline in the past ends the loop's read at once; the loop re-arms its
	// own (see loop) and serves the request before it reads again.
	s.conn.SetReadDeadline(time.Now())
	t := time.NewTimer(loopAskTimeout)
	defer t.Stop()
	select {
	case snap := <-req.reply:
		return snap, nil
	case <-s.loopDone:
		return nil, ErrAlreadyClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("server: the loop did not answer within %v", loopAskTimeout)
	}
}

// lockView is the JSON of GET /locks (cmd/netmutex's 'netmutex locks' reads it).
type lockView struct {
	Locks                []lockViewRow `json:"locks"`
	LocksHeld            int           `json:"locks_held"`
	Truncated            bool          `json:"truncated"`
	Sessions             int           `json:"sessions"`
	Waiters              int           `json:"waiters"`
	LockDelayRemainingMS int64         `json:"lock_delay_remaining_ms"`
}

type lockViewRow struct {
	Key         string `json:"key"`
	Fence       uint64 `json:"fence"`
	Session     string `json:"session"` // 16 hex digits
	HolderInfo  string `json:"holder_info"`
	ExpiresInMS int64  `json:"expires_in_ms"`
	Waiters     int    `json:"waiters"`
}

func (s *Server) handleLocks(w http.ResponseWriter, r *http.Request) {
	snap, err := s.ask(r.Context(), &loopReq{locks: true, reply: make(chan *locksSnap, 1)})
	if err == nil && snap == nil {
		err = ErrAlreadyClosed
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	rows := []heldRow(snap.rows)
	slices.SortFunc(rows, func(a, b heldRow) int { return strings.Compare(a.Key, b.Key) })
	v := lockView{
		Locks:                make([]lockViewRow, len(rows)),
		LocksHeld:            snap.held,
		Truncated:            snap.held > len(rows),
		Sessions:             snap.sessions,
		Waiters:              snap.waiters,
		LockDelayRemainingMS: s.lockDelayRemaining().Milliseconds(),
	}
	for i, r := range rows {
		v.Locks[i] = lockViewRow{Key: r.Key, Fence: r.Fence, Session: fmt.Sprintf("%016x", r.Session),
			HolderInfo: r.Info, ExpiresInMS: r.expiresIn.Milliseconds(), Waiters: r.Waiters}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(&v)
}

func (s *Server) handleHealth(ready bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.ask(r.Context(), &loopReq{reply: make(chan *locksSnap, 1)}); err != nil {
			http.Error(w, "not serving: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready {
			fmt.Fprintln(w, "ok")
			return
		}
		if s.rep != nil && !s.Leading() {
			// A follower is ready to redirect once it knows a leader; with none the
			// cluster serves nobody through it.
			m, ok := s.rep.leader()
			if !ok {
				http.Error(w, "not ready: no leader known (an election, or no quorum)", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "ready\nrole: follower; leader: server %d at %s\n", m.ID, m.Addr)
			return
		}
		fmt.Fprintln(w, "ready")
		if s.rep != nil {
			fmt.Fprintln(w, "role: leader")
		}
		if d := s.lockDelayRemaining(); d > 0 {
			fmt.Fprintf(w, "lock-delay: %v left, no lock granted until then\n", d.Round(time.Millisecond))
		}
	}
}

// listenHTTP builds the HTTP server on ln, bound to Config.HTTPAddr by newServer (nil:
// none); serveHTTP starts it.
func (s *Server) listenHTTP(ln net.Listener) {
	if ln == nil {
		return
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(s), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /locks", s.handleLocks)
	mux.HandleFunc("GET /healthz", s.handleHealth(false))
	mux.HandleFunc("GET /readyz", s.handleHealth(true))
	s.httpLn = ln
	s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	s.httpDone = make(chan struct{})
}

// serveHTTP serves the HTTP server, if any, until stopHTTP.
func (s *Server) serveHTTP() {
	if s.httpSrv == nil {
		return
	}
	go func() {
		defer close(s.httpDone)
		if err := s.httpSrv.Serve(s.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server failed", "addr", s.httpLn.Addr().String(), "err", err)
		}
	}()
	s.log.Info("http serving", "addr", s.httpLn.Addr().String(), "paths", "/metrics /locks /healthz /readyz")
}

// stopHTTP ends the HTTP server: the requests in progress get httpShutdown to finish
// (the loop still runs and answers them), then their connections are closed.
func (s *Server) stopHTTP() {
	if s.httpSrv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), httpShutdown)
	defer cancel()
	if err := s.httpSrv.Shutdown(ctx); err != nil {
		s.httpSrv.Close()
	}
	<-s.httpDone
}

// HTTPAddr is the address the HTTP server is bound to; nil without one (Config.HTTPAddr
// empty).
func (s *Server) HTTPAddr() net.Addr {
	if s.httpLn == nil {
		return nil
	}
	return s.httpLn.Addr()
}
