// The server: New, Close and Abort. The loop it runs is in loop.go.

// Package server is the netmutex lock server: a network loop (one goroutine, batched UDP
// I/O) around a deterministic lock state machine (machine.go), with the little that must
// survive a restart kept in a data directory.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/wire"
)

// tick is how often the loop wakes without traffic while locks or sessions exist, so that
// expiry and session timeouts happen on time. 20ms keeps expiry late by at most that,
// at 50 idle wake-ups a second.
const tick = 20 * time.Millisecond

// BUG(netmutex): Where a read takes one datagram (batchio.MaxBatch is 1: every system
// but Linux), a read cannot tell whether more datagrams wait behind it, so the server
// never sets FlagBusy there: its clients get no back-pressure.

// isoQueue is the capacity of the channel of finished isolation runs. The loop empties it
// at every batch or tick, so 64 is room for far more runs than end within one tick; a
// run that still finds it full waits (in its own goroutine), never the loop.
const isoQueue = 64

// Server is a running lock server. Its methods are safe for concurrent use.
type Server struct {
	cfg   Config
	log   *slog.Logger
	conn  *net.UDPConn
	bc    batchio.Conn
	addr  netip.AddrPort
	store *store
	m     *machine
	epoch time.Time
	stats counters

	metrics  *metrics
	reqs     chan *loopReq // the HTTP handlers' requests to the loop
	httpLn   net.Listener  // nil: no HTTP server (Config.HTTPAddr empty)
	httpSrv  *http.Server
	httpDone chan struct{}
	// delayUntil is the end of the start-up lock-delay in the loop's clock (0: none).
	delayUntil int64

	isoCtx    context.Context
	isoCancel context.CancelFunc
	isoDone   chan uint64
	isoWG     sync.WaitGroup // isolation runs, and the loop's background memory return

	rebuildsSeen   int   // Machine.Rebuilds when memory was last returned
	memoryReturned int64 // loop time of the last return, 0 = never
	loopDone       chan struct{}

	closeMu  sync.Mutex
	closed   bool
	stopping atomic.Bool // set before the socket closes: a polling loop stops polling

	// Owned by the loop goroutine.
	in        []batchio.Message
	onBatchFn func(n int) batchio.ReadAction // s.onBatch, bound once: ReadLoop's handler
	poller    batchio.Poller
	guard     // the receive stage's defences and routes: see auth.go
	cmds      []command
	results   []result
	isos      []isolation
	out       []batchio.Message
	outBufs   [][]byte
	builders  []builder
	byKey     map[replyKey]int // per batch: index in builders
	connected wire.Connected
	deadline  time.Time
	lastFull  bool             // the last read filled s.in; see took
	behind    bool             // the loop has fallen behind: replies get FlagBusy; see took
	reserveOK bool             // the last reservation succeeded; see reserveBatch
	reserving bool             // a reservation is being written in the background
	reserved  chan reservation // its outcome; buffered 1
	isoRuns   isoRuns          // isolation runs: bounded, queued, one per session; see isolate.go
	batch     batchCounts      // this batch's tallies, folded into metrics once per batch
	debug     bool             // the logger takes debug records: checked once per batch
	scan      *lockScan        // a GET /locks snapshot being read; see http.go
	inDelay   bool             // the lock-delay has not been seen to end yet
	isoSeen   uint64           // the machine's isolations logged so far

	mcfg        machineConfig    // what the machine was made with (a restore makes it again)
	redirectTo  *Member          // a follower's REDIRECT target; nil: none (see beginCluster)
	leaderHint  Member           // the cluster's leader, as redirectTo points to it
	rep         *replica         // nil: a single server
	cl          clusterLoop      // the loop's state as a cluster node
	clusterReqs chan *clusterReq // Raft's goroutines' requests to the loop
	leading     atomic.Bool      // the loop's cl.leading, for Leading
}

// Leading tells whether this server is the cluster's leader, caught up and serving. A
// single server (no Config.Cluster) always is.
func (s *Server) Leading() bool { return s.rep == nil || s.leading.Load() }

// New opens the data directory, binds the socket and starts serving; with
// Config.HTTPAddr it serves /metrics, /locks, /healthz and /readyz there too (see
// http.go), until Close. A zero field of cfg that has a Default constant (ListenAddr,
// MaxTTL, SessionTimeout, RetransmitWindow, IsolateTimeout, ServerID) takes that
// default; then cfg must pass Validate.
func New(cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	go s.loop()
	if s.cfg.Cluster != nil {
		if err := s.startReplica(); err != nil {
			s.Close()
			return nil, err
		}
	}
	s.serveHTTP()
	return s, nil
}

// newServer does all of New but start the loop.
func newServer(cfg Config) (*Server, error) {
	cfg.Servers = slices.Clone(cfg.Servers) // the caller may reuse its slice
	if cfg.Cluster != nil {
		cc := cfg.Cluster.withDefaults()
		cc.Members = slices.Clone(cc.Members)
		cfg.Cluster = &cc
		if err := cc.validate(); err != nil {
			return nil, err
		}
		me := cc.Members[cc.self()]
		if cfg.ListenAddr == "" {
			cfg.ListenAddr = me.ClientAddr
		}
		cfg.ServerID = uint16(cc.self() + 1)
		cfg.Servers = cc.servers()
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	laddr, err := net.ResolveUDPAddr("udp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("server: listen address: %w", err)
	}
	// Bind every address before the store records this start as unclean: a start that
	// cannot serve grants nothing, and must not give the next start a lock-delay.
	conn, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("server: listen: %w", err)
	}
	batchio.SetBuffers(conn)
	bc, err := batchio.New(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	var httpLn net.Listener
	if cfg.HTTPAddr != "" {
		if httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			conn.Close()
			return nil, fmt.Errorf("server: http listen: %w", err)
		}
	}
	st, err := openStore(cfg.DataDir, cfg.MaxTTL)
	if err != nil {
		conn.Close()
		if httpLn != nil {
			httpLn.Close()
		}
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      log,
		conn:     conn,
		bc:       bc,
		addr:     conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		store:    st,
		epoch:    time.Now(),
		isoDone:  make(chan uint64, isoQueue),
		loopDone: make(chan struct{}),
		metrics:  newMetrics(),
		reqs:     make(chan *loopReq, loopQueue),
	}
	s.batch.touched = make([]uint16, 0, numKinds*numOutcomes)
	s.isoCtx, s.isoCancel = context.WithCancel(context.Background())
	mc := machineConfig{
		MaxTTL:         int64(cfg.MaxTTL),
		SessionTimeout: int64(cfg.SessionTimeout),
		Isolate:        cfg.IsolateCmd != "",
		FirstFence:     st.firstFence(),

		MaxSessions:        cfg.MaxSessions,
		MaxSessionsPerAddr: cfg.MaxSessionsPerAddr,
		MaxLocksPerSession: cfg.MaxLocksPerSession,
		MaxLocks:           cfg.MaxLocks,

		MaxWaitersPerKey:     cfg.MaxWaitersPerKey,
		MaxWaitersPerSession: cfg.MaxWaitersPerSession,
	}
	if cfg.Cluster != nil {
		// The log holds the state, and its time stands still while no node leads: a
		// restarted cluster node needs no lock-delay, and its fences come from the log.
		st.lockDelay = false
		mc.FirstFence = 1
		s.clusterReqs = make(chan *clusterReq, clusterQueue)
		s.cl.origin = newOrigin()
		s.rep = newReplica(*cfg.Cluster, s.cl.origin)
	}
	if st.lockDelay {
		mc.LockDelayUntil = int64(st.delay) // the loop's clock starts at 0 at epoch
		s.delayUntil, s.inDelay = mc.LockDelayUntil, true
	}
	s.mcfg = mc
	s.m = newMachine(mc)
	s.redirectTo = cfg.Redirect
	s.reserved = make(chan reservation, 1)
	if cfg.Cluster != nil {
		s.m.SetFenceLimit(unlimitedFences)
	} else if err := s.reserve(0); err != nil {
		conn.Close()
		if httpLn != nil {
			httpLn.Close()
		}
		st.close()
		s.isoCancel()
		return nil, err
	}
	s.connected = wire.Connected{
		MaxTTLMs:           uint32(cfg.MaxTTL / time.Millisecond),
		SessionTimeoutMs:   uint32(cfg.SessionTimeout / time.Millisecond),
		RetransmitWindowMs: uint32(cfg.RetransmitWindow / time.Millisecond),
		ServerID:           cfg.ServerID,
		Servers:            cfg.Servers,
	}
	if s.connected.Servers == nil {
		s.connected.Servers = []wire.Server{{ID: cfg.ServerID, Addr: s.addr.String()}}
	}
	s.in = make([]batchio.Message, batchio.MaxBatch)
	s.onBatchFn = s.onBatch
	for i := range s.in {
		// One byte over the limit, so an oversized datagram is seen as such.
		s.in[i].Buf = make([]byte, wire.MaxDatagram+1)
	}
	s.cmds = make([]command, 0, batchio.MaxBatch*8)
	s.results = make([]result, 0, batchio.MaxBatch*8)
	s.byKey = make(map[replyKey]int)
	s.initGuard(cfg)
	s.listenHTTP(httpLn)
	s.publish()
	log.Info("netmutexd serving", "addr", s.addr.String(), "data", cfg.DataDir,
		"boot", st.st.boot, "previous_stop", previousStop(st), "lock_delay", st.lockDelay,
		"lock_delay_for", st.delay, "first_fence", s.m.NextFence(), "redirect", cfg.Redirect != nil)
	if st.lockDelay {
		log.Warn("lock-delay: no lock is granted until the longest TTL an earlier boot may have granted has run out",
			"for", st.delay, "previous_stop", previousStop(st))
	}
	return s, nil
}

// previousStop says how the boot before this one stopped, for the start's log.
func previousStop(st *store) string {
	switch {
	case st.fresh:
		return "none: new data directory"
	case !st.prevClean:
		return "unclean: crash or kill"
	case st.prevHeld:
		return "clean, with locks held"
	}
	return "clean"
}

// Addr is the address the server is bound to.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// LockDelay tells whether this start began with a lock-delay.
func (s *Server) LockDelay() bool { return s.store.lockDelay }

// Close stops the server cleanly: the loop ends, running isolation commands are waited
// for (each is bounded by IsolateTimeout), the clean stop is recorded (with whether locks
// were still held, which decides the next start's lock-delay) and the socket is closed.
// No goroutine of the server is left when it returns.
func (s *Server) Close() error { return s.stop(true) }

// Abort stops the server as a crash would, for tests: no clean stop is recorded, so the
// next start on the same DataDir has a lock-delay. Isolation commands are killed.
func (s *Server) Abort() error { return s.stop(false) }

func (s *Server) stop(clean bool) error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return ErrAlreadyClosed
	}
	s.closed = true
	s.stopHTTP() // its handlers may be waiting for the loop: before the loop ends
	var rerr error
	if s.rep != nil {
		rerr = s.rep.stop() // Raft's FSM hands entries to the loop: before the loop ends
	}
	if !clean {
		s.isoCancel()
	}
	// Closing the socket is what ends the loop's blocking read.
	s.stopping.Store(true)
	err := s.conn.Close()
	<-s.loopDone
	s.isoWG.Wait()
	s.isoCancel()
	if clean {
		locks := s.m.Locks() > 0 // the loop has ended: the machine is ours now
		if werr := s.store.markClean(locks); werr != nil && err == nil {
			err = werr
		}
		s.log.Info("netmutexd stopped", "clean", true, "locks_held", locks)
	}
	if cerr := s.store.close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = rerr
	}
	return err
}
