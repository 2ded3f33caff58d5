// Package netmutex is the client of the netmutex lock server: distributed try-locks with
// a TTL, heartbeats, fencing tokens and isolation of holders whose lock expired.
//
// One NetMutex holds one UDP socket to one server of the cluster at a time and is safe
// for any number of goroutines. Requests from all of them are batched into shared
// datagrams; the steady state allocates nothing.
//
// Failover keeps the session: when the server stops answering (nothing from it for one
// attempt's timeout while a request waits), refuses datagrams, or answers that it is
// not the cluster's leader, the socket moves to the next server the cluster named, with
// the same local address, and every waiting request is sent there again with its id.
// A cluster that replicates sessions then serves them on, locks held included; calls
// wait through an election within their pacing (docs/PROTOCOL.md, Failover).
//
// Each call comes in two forms that share one implementation: the original's
// (retries, timeout) form, where every attempt waits timeout and a lost datagram is sent
// again with the same request id up to retries attempts, and a context form, whose
// deadline and cancellation come from the context and whose attempts are paced by
// Options.Retries and Options.Timeout.
//
// Isolation is per session, as in the original: a NetMutex is one session, and when any
// one of its locks expires while it is connected, the server isolates the whole session:
// every lock it holds is lost and every later call returns ErrIsolated. Workers that must
// fail independently each open a NetMutex of their own; each costs a UDP socket, two
// goroutines and about 1.2 MB (its ring and in-flight table), and one session on the
// server.
//
// With Options.KeyFile, every datagram is sealed with a pre-shared key and only replies
// that authenticate are believed (docs/PROTOCOL.md, Security).
package netmutex

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// Limits.
const (
	// MaxKeySize is the longest key in bytes.
	MaxKeySize = wire.MaxKey
	// MaxIsolationInfo is the longest Options.IsolationInfo in bytes.
	MaxIsolationInfo = wire.MaxIsolationInfo
	// MaxManyKeys is the most keys one AcquireMany may lock.
	MaxManyKeys = wire.MaxManyKeys
	// MaxSpinWait is the longest Options.SpinWait (the server's bound too).
	MaxSpinWait = batchio.MaxSpinWait
)

// Defaults that pace the context forms when Options leaves them zero.
const (
	// DefaultRetries is how many attempts a context-form call makes at most.
	DefaultRetries = 10
	// DefaultTimeout is how long a context-form call waits for each attempt: far above
	// a loopback or LAN round trip, short enough that a lost datagram costs little.
	DefaultTimeout = 200 * time.Millisecond
)

// Options tune a NetMutex. The zero value is ready to use.
type Options struct {
	// IsolationInfo is handed to the server's isolation command on standard input if
	// this client is isolated: what the operator needs to stop it (host, pid, ...).
	IsolationInfo string
	// KeyFile is a file of pre-shared keys, lines "ID HEX" (docs/PROTOCOL.md, Security):
	// every datagram is then sealed with the first key, and only replies that open under
	// one of the keys are believed. Empty: plain datagrams, for a server without keys.
	KeyFile string
	// Retries caps the attempts of a context-form call (default DefaultRetries).
	Retries int
	// Timeout is the wait for each attempt of a context-form call (default
	// DefaultTimeout). A server that sends nothing for that long while a request waits
	// is left for another server of the cluster.
	Timeout time.Duration
	// SpinWait trades CPU for latency: after each reply, the connection keeps polling
	// its socket for this long before it sleeps in the Go netpoller, so a reply that
	// arrives meanwhile is taken without waking a sleeping thread, which costs tens of
	// microseconds on virtual machines. Worth it for a few latency-bound callers against
	// a server of its own; it burns up to a core while they are active, and competes with
	// a server in the same process. 0 (the default): sleep at once. At most MaxSpinWait.
	// Linux only: without recvmmsg (and with the netmutex_portable tag) the socket cannot
	// be polled, and SpinWait has no effect.
	SpinWait time.Duration

	unbatched bool // one frame per datagram per system call: the benchmarks' baseline
}

// Lock is one held key. The zero value is ready to use, and a Lock can be used again
// after Unlock. Calls on one Lock are serialised.
type Lock struct {
	mu      sync.Mutex
	key     string
	id      uint64 // the granting LOCK's request id: the lock's identity
	fence   uint64
	session uint64
	conn    *serverConn
}

// Key returns the locked key, or "" when the Lock holds nothing.
func (l *Lock) Key() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.key
}

// FenceID returns the lock's fencing token: strictly greater than that of every earlier
// grant by the server, across its restarts. Pass it to the resource you protect, which
// must reject any write carrying a smaller one.
func (l *Lock) FenceID() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fence
}

// set and reset leave mu alone: they run under it.
func (l *Lock) set(key string, id, fence, session uint64, c *serverConn) {
	l.key, l.id, l.fence, l.session, l.conn = key, id, fence, session, c
}

func (l *Lock) reset() { l.set("", 0, 0, 0, nil) }

// NetMutex is a connection to a netmutex server or cluster.
type NetMutex struct {
	info      string
	keys      *seal.Keyring // nil: plain datagrams
	unbatched bool
	spinWait  time.Duration
	retries   int
	timeout   time.Duration
	closed    atomic.Bool
	conn      atomic.Pointer[serverConn]
	switchMu  sync.Mutex // one server switch at a time
	servers   []string   // the cluster as last told; guarded by switchMu
}

// Open connects to the first of addrs that answers, and learns the cluster's servers
// from it. Every address is tried at once; each gets a CONNECT every timeout, for up to
// retries attempts.
func Open(retries int, timeout time.Duration, addrs []string, options *Options) (*NetMutex, error) {
	return open(&pacing{attempts: max(retries, 1), timeout: int64(timeout)}, addrs, options)
}

// OpenContext is Open with the context's deadline and cancellation.
func OpenContext(ctx context.Context, addrs []string, options *Options) (*NetMutex, error) {
	var o Options
	if options != nil {
		o = *options
	}
	pc := contextPacing(ctx, o.Retries, o.Timeout)
	return open(&pc, addrs, options)
}

func open(pc *pacing, addrs []string, options *Options) (*NetMutex, error) {
	nm := &NetMutex{retries: DefaultRetries, timeout: DefaultTimeout}
	if options != nil {
		nm.info = options.IsolationInfo
		nm.unbatched = options.unbatched
		nm.spinWait = options.SpinWait
		if options.Retries > 0 {
			nm.retries = options.Retries
		}
		if options.Timeout > 0 {
			nm.timeout = options.Timeout
		}
	}
	if len(nm.info) > MaxIsolationInfo {
		return nil, ErrLongIsolationInfo
	}
	if nm.spinWait < 0 || nm.spinWait > MaxSpinWait {
		return nil, ErrWrongSpinWait
	}
	if options != nil && options.KeyFile != "" {
		keys, err := seal.LoadKeyFile(options.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("netmutex: key file: %w", err)
		}
		nm.keys = keys
	}
	if len(addrs) == 0 {
		return nil, ErrNoServers
	}
	if pc.timeout <= 0 {
		pc.timeout = int64(nm.timeout)
	}
	c, err := nm.connect(pc, addrs)
	if err != nil {
		return nil, err
	}
	nm.conn.Store(c)
	nm.servers = c.clusterAddrs(addrs)
	return nm, nil
}

// Lock takes key for ttl, or returns ErrLocked if another holder has it. On success l
// holds the lock, its fencing token and its identity.
func (nm *NetMutex) Lock(retries int, timeout time.Duration, l *Lock, key string, ttl time.Duration) error {
	pc := pacing{attempts: max(retries, 1), timeout: int64(timeout)}
	return nm.lock(&pc, l, key, ttl, false)
}

// LockContext is Lock with the context's deadline and cancellation.
func (nm *NetMutex) LockContext(ctx context.Context, l *Lock, key string, ttl time.Duration) error {
	pc := contextPacing(ctx, nm.retries, nm.timeout)
	return nm.lock(&pc, l, key, ttl, false)
}

// Acquire waits in the server's queue for key until it is granted or ctx ends. Waiters
// are served first come, first served, and the key passes from holder to waiter in one
// step of the server. When ctx ends first, Acquire returns ctx.Err() once the waiter has
// left the queue, or the key it was granted meanwhile is released: never a lock left to
// expire and isolate the session. It sends that release and waits for its answer, paced
// by ttl, so it may return up to about one ttl after ctx ends when the server is hard to
// reach; if no answer comes, the error also wraps ErrTooMuchRetries (the key may stay
// granted to this session until it expires). Acquire waits through the server's
// start-up lock-delay.
func (nm *NetMutex) Acquire(ctx context.Context, l *Lock, key string, ttl time.Duration) error {
	pc := waitPacing(ctx, nm.retries, nm.timeout)
	return nm.lock(&pc, l, key, ttl, true)
}

// AcquireMany locks every keys[i] into locks[i] atomically: all of them or none, in one
// request, one fence per key. It waits as Acquire does; two AcquireMany over shared keys
// cannot deadlock, and one is not starved by single-key traffic (docs/PROTOCOL.md,
// Waiting). Each Lock is then unlocked or updated on its own.
func (nm *NetMutex) AcquireMany(ctx context.Context, locks []*Lock, keys []string, ttl time.Duration) error {
	pc := waitPacing(ctx, nm.retries, nm.timeout)
	return nm.acquireMany(&pc, locks, keys, ttl)
}

// Hold acquires key (waiting), renews it in the background, and runs fn with a context
// that is cancelled before the server could let the lock expire; it unlocks when fn
// returns. The client never believes it holds the lock longer than the server does: the
// lease is counted from the send time of the request that granted or last renewed it,
// less a margin of a tenth of ttl, and fn's context ends with ErrLeaseExpired if no
// renewal lands in time, or at once with ErrIsolated or ErrLockLost (see
// context.Cause). Hold returns fn's error, or else why the lock was lost.
func (nm *NetMutex) Hold(ctx context.Context, key string, ttl time.Duration, fn func(ctx context.Context, l *Lock) error) error {
	return nm.hold(ctx, key, ttl, fn)
}

// Update extends the lock's TTL to ttl from now: the heartbeat of a long holder.
func (nm *NetMutex) Update(retries int, timeout time.Duration, l *Lock, ttl time.Duration) error {
	pc := pacing{attempts: max(retries, 1), timeout: int64(timeout)}
	return nm.update(&pc, l, ttl)
}

// UpdateContext is Update with the context's deadline and cancellation.
func (nm *NetMutex) UpdateContext(ctx context.Context, l *Lock, ttl time.Duration) error {
	pc := contextPacing(ctx, nm.retries, nm.timeout)
	return nm.update(&pc, l, ttl)
}

// Unlock releases the lock. l can then be used again.
func (nm *NetMutex) Unlock(retries int, timeout time.Duration, l *Lock) error {
	pc := pacing{attempts: max(retries, 1), timeout: int64(timeout)}
	return nm.unlock(&pc, l)
}

// UnlockContext is Unlock with the context's deadline and cancellation.
func (nm *NetMutex) UnlockContext(ctx context.Context, l *Lock) error {
	pc := contextPacing(ctx, nm.retries, nm.timeout)
	return nm.unlock(&pc, l)
}

// UnlockAll releases every lock on the server, anyone's: an operator's action. Every
// client that held a lock is isolated.
func (nm *NetMutex) UnlockAll(retries int, timeout time.Duration) error {
	pc := pacing{attempts: max(retries, 1), timeout: int64(timeout)}
	return nm.unlockAll(&pc)
}

// UnlockAllContext is UnlockAll with the context's deadline and cancellation.
func (nm *NetMutex) UnlockAllContext(ctx context.Context) error {
	pc := contextPacing(ctx, nm.retries, nm.timeout)
	return nm.unlockAll(&pc)
}

// Close ends the session, which releases its locks, and stops the connection's
// goroutines and socket. Every later call returns ErrDisconnected.
func (nm *NetMutex) Close(retries int, timeout time.Duration) error {
	pc := pacing{attempts: max(retries, 1), timeout: int64(timeout)}
	return nm.close(&pc)
}

// CloseContext is Close with the context's deadline and cancellation.
func (nm *NetMutex) CloseContext(ctx context.Context) error {
	pc := contextPacing(ctx, nm.retries, nm.timeout)
	return nm.close(&pc)
}

// Stats are counters of the connection to the current server.
type Stats struct {
	// FramesOut counts request frames sent (retransmissions included), DatagramsOut the
	// datagrams that carried them, SendCalls the system calls that sent those: frames
	// per datagram and datagrams per call say how well requests were batched.
	FramesOut, DatagramsOut, SendCalls uint64
	// FramesIn, DatagramsIn and RecvCalls are the same for replies.
	FramesIn, DatagramsIn, RecvCalls uint64
	// BadDatagrams counts replies dropped whole: malformed, failing their checksum, or,
	// with keys, not authenticating or replayed.
	BadDatagrams uint64
	// Retransmits counts request frames sent again after an attempt went unanswered.
	Retransmits uint64
	// Busy counts reply datagrams in which the server said it was falling behind.
	Busy uint64
	// Moves counts the times the connection moved to another server of the cluster,
	// keeping its session: the server had stopped answering, or was not the leader.
	Moves uint64
	// NotLeader counts NOT_LEADER answers: requests a follower sent back, which went
	// to another server.
	NotLeader uint64
}

// Stats returns the counters of the connection to the current server.
func (nm *NetMutex) Stats() Stats {
	c := nm.conn.Load()
	if c == nil {
		return Stats{}
	}
	s := &c.stats
	return Stats{
		FramesOut: s.framesOut.Load(), DatagramsOut: s.datagramsOut.Load(), SendCalls: s.sendCalls.Load(),
		FramesIn: s.framesIn.Load(), DatagramsIn: s.datagramsIn.Load(), RecvCalls: s.recvCalls.Load(),
		BadDatagrams: s.badIn.Load(), Retransmits: s.retransmits.Load(), Busy: s.busy.Load(),
		Moves: s.moves.Load(), NotLeader: s.notLeader.Load(),
	}
}
