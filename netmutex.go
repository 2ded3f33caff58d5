// Package netmutex is the client of the netmutex lock server: distributed try-locks with
// a TTL, heartbeats, fencing tokens and isolation of holders whose lock expired.
//
// One NetMutex holds one UDP socket to one server of the cluster and is safe for any
// number of goroutines. Requests from all of them are batched into shared datagrams;
// the steady state allocates nothing.
//
// Each call comes in two forms that share one implementation: the original's
// (retries, timeout) form, where every attempt waits timeout and a lost datagram is sent
// again with the same request id up to retries attempts, and a context form, whose
// deadline and cancellation come from the context and whose attempts are paced by
// Options.Retries and Options.Timeout.
package netmutex

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// Limits.
const (
	// MaxKeySize is the longest key in bytes.
	MaxKeySize = wire.MaxKey
	// MaxIsolationInfo is the longest Options.IsolationInfo in bytes.
	MaxIsolationInfo = wire.MaxIsolationInfo
)

// Defaults that pace the context forms when Options leaves them zero.
const (
	// DefaultRetries is how many attempts a context-form call makes at most.
	DefaultRetries = 10
	// DefaultTimeout is how long a context-form call waits for each attempt: far above
	// a loopback or LAN round trip, short enough that a lost datagram costs little.
	DefaultTimeout = 200 * time.Millisecond
)

// Errors. Compare them with == or errors.Is.
var (
	// ErrDisconnected is returned by every call after Close.
	ErrDisconnected = errors.New("netmutex: disconnected")
	// ErrIsolated is returned once a lock of this client expired while it was still
	// connected: the server has isolated it, and the program must stop working on
	// anything it locked.
	ErrIsolated = errors.New("netmutex: isolated by the server")
	// ErrLocked is returned by Lock when another holder has the key.
	ErrLocked = errors.New("netmutex: key is locked")
	// ErrNoServers is returned by Open when no address answered, or was given.
	ErrNoServers = errors.New("netmutex: no server answered")
	// ErrTooMuchRetries is returned when every attempt of a call went unanswered. It
	// reports Timeout() == true.
	ErrTooMuchRetries error = &timeoutError{"netmutex: too much retries"}
	// ErrLongKey is returned for a key over MaxKeySize bytes.
	ErrLongKey = errors.New("netmutex: key too long")
	// ErrEmptyKey is returned for an empty key.
	ErrEmptyKey = errors.New("netmutex: empty key")
	// ErrWrongTTL is returned for a TTL that is zero, negative or absurdly long.
	ErrWrongTTL = errors.New("netmutex: wrong TTL")
	// ErrTTLTooLong is returned for a TTL over the server's maximum.
	ErrTTLTooLong = errors.New("netmutex: TTL over the server's maximum")
	// ErrLongIsolationInfo is returned by Open for IsolationInfo over MaxIsolationInfo.
	ErrLongIsolationInfo = errors.New("netmutex: isolation info too long")
	// ErrNilLock is returned when a nil *Lock is passed.
	ErrNilLock = errors.New("netmutex: nil Lock")
	// ErrNotLocked is returned by Update and Unlock for a Lock that holds nothing: never
	// acquired, or already unlocked.
	ErrNotLocked = errors.New("netmutex: lock not held")
	// ErrLockInUse is returned by Lock for a Lock that still holds a key.
	ErrLockInUse = errors.New("netmutex: Lock already holds a key")
	// ErrLockLost is returned by Update and Unlock when the server no longer knows the
	// lock: it restarted, or forgot this client's session. The Lock is reset.
	ErrLockLost = errors.New("netmutex: lock lost")
	// ErrLockDelay is returned by Lock while a server that restarted without a clean
	// stop waits one maximum TTL before granting anything.
	ErrLockDelay = errors.New("netmutex: server is in its start-up lock-delay")
	// ErrRefused is returned when the server rejected a request as malformed or stale.
	ErrRefused = errors.New("netmutex: request refused by the server")
)

type timeoutError struct{ msg string }

func (e *timeoutError) Error() string   { return e.msg }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

// errDeadline is what the send loop fails a request with when its context's deadline
// passes first.
var errDeadline = context.DeadlineExceeded

// Options tune a NetMutex. The zero value is ready to use.
type Options struct {
	// IsolationInfo is handed to the server's isolation command on standard input if
	// this client is isolated: what the operator needs to stop it (host, pid, ...).
	IsolationInfo string
	// Retries caps the attempts of a context-form call (default DefaultRetries).
	Retries int
	// Timeout is the wait for each attempt of a context-form call (default
	// DefaultTimeout).
	Timeout time.Duration

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
	unbatched bool
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
	return nm.lock(&pc, l, key, ttl)
}

// LockContext is Lock with the context's deadline and cancellation.
func (nm *NetMutex) LockContext(ctx context.Context, l *Lock, key string, ttl time.Duration) error {
	pc := contextPacing(ctx, nm.retries, nm.timeout)
	return nm.lock(&pc, l, key, ttl)
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
	FramesOut, DatagramsOut, SendCalls uint64
	FramesIn, DatagramsIn, RecvCalls   uint64
	BadDatagrams, Retransmits, Busy    uint64
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
	}
}

// The shared implementation.

// pacing is how one call retries: attempts of timeout ns each, an absolute deadline
// (nanotime, 0 = none) and a context for cancellation (nil = none).
type pacing struct {
	attempts int
	timeout  int64
	deadline int64
	ctx      context.Context
}

func contextPacing(ctx context.Context, retries int, timeout time.Duration) pacing {
	if retries <= 0 {
		retries = DefaultRetries
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	pc := pacing{attempts: retries, timeout: int64(timeout)}
	if ctx.Done() != nil {
		pc.ctx = ctx
	}
	if d, ok := ctx.Deadline(); ok {
		pc.deadline = nanotime() + int64(time.Until(d))
		// Spend what the context allows, not less: attempts end at the deadline.
		pc.attempts = math.MaxInt32
	}
	return pc
}

// params is one operation's content.
type params struct {
	op     wire.Op
	key    string
	lockID uint64
	ttlMs  uint32
}

func (p *params) encode(r *request) {
	switch p.op {
	case wire.OpLock:
		r.encodeLock(p.key, p.ttlMs)
	case wire.OpUpdate:
		r.encodeUpdate(p.lockID, p.key, p.ttlMs)
	case wire.OpUnlock:
		r.encodeUnlock(p.lockID, p.key)
	default:
		r.encodeEmpty(p.op)
	}
}

// maxHops bounds how often one call follows a redirect or re-sends on a new session.
const maxHops = 4

// exchange runs one operation to its result. A LOCK or UNLOCKALL answered with
// DISCONNECTED (the server forgot the session) is sent again on the new session; a
// REDIRECT is followed; a server that stopped answering is left for another.
func (nm *NetMutex) exchange(pc *pacing, p *params) (result, *serverConn) {
	for hop := 0; ; hop++ {
		c := nm.conn.Load()
		if c.isolated.Load() {
			return result{op: wire.OpIsolated}, c
		}
		r := acquireRequest(p.op, pc.attempts, pc.timeout, pc.deadline)
		p.encode(r)
		res := c.roundTrip(r, pc.ctx)
		if hop < maxHops && !nm.closed.Load() {
			switch {
			case res.op == wire.OpRedirect:
				if nm.switchTo(c, []string{res.addr}, pc) {
					continue
				}
			case res.op == wire.OpDisconnected && (p.op == wire.OpLock || p.op == wire.OpUnlockAll):
				continue
			case res.err == ErrTooMuchRetries:
				nm.failover(c, pc)
			}
		}
		return res, c
	}
}

func (nm *NetMutex) lock(pc *pacing, l *Lock, key string, ttl time.Duration) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	if l == nil {
		return ErrNilLock
	}
	if key == "" {
		return ErrEmptyKey
	}
	if len(key) > MaxKeySize {
		return ErrLongKey
	}
	ttlMs, err := nm.ttlMillis(ttl)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id != 0 && !nm.lost(l) {
		return ErrLockInUse
	}
	res, c := nm.exchange(pc, &params{op: wire.OpLock, key: key, ttlMs: ttlMs})
	if res.err == nil && res.op == wire.OpOK {
		l.set(key, res.id, res.fence, res.session, c)
		return nil
	}
	return resultErr(res)
}

func (nm *NetMutex) update(pc *pacing, l *Lock, ttl time.Duration) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	if l == nil {
		return ErrNilLock
	}
	ttlMs, err := nm.ttlMillis(ttl)
	if err != nil {
		return err
	}
	return nm.onHeld(pc, l, wire.OpUpdate, ttlMs)
}

func (nm *NetMutex) unlock(pc *pacing, l *Lock) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	if l == nil {
		return ErrNilLock
	}
	return nm.onHeld(pc, l, wire.OpUnlock, 0)
}

// onHeld sends an UPDATE or UNLOCK of the lock l holds. A lock the server no longer
// knows, or whose holder is isolated, leaves l empty; so does a successful UNLOCK.
func (nm *NetMutex) onHeld(pc *pacing, l *Lock, op wire.Op, ttlMs uint32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.id == 0 {
		return ErrNotLocked
	}
	if nm.lost(l) {
		l.reset()
		return ErrLockLost
	}
	res, _ := nm.exchange(pc, &params{op: op, key: l.key, lockID: l.id, ttlMs: ttlMs})
	if res.err == nil && res.op == wire.OpOK {
		if op == wire.OpUnlock {
			l.reset()
		}
		return nil
	}
	err := resultErr(res)
	if err == ErrLockLost || err == ErrIsolated {
		l.reset()
	}
	return err
}

func (nm *NetMutex) unlockAll(pc *pacing) error {
	if nm.closed.Load() {
		return ErrDisconnected
	}
	res, _ := nm.exchange(pc, &params{op: wire.OpUnlockAll})
	if res.err == nil && res.op == wire.OpPong { // UNLOCKALL's empty acknowledgement
		return nil
	}
	return resultErr(res)
}

func (nm *NetMutex) close(pc *pacing) error {
	if nm.closed.Swap(true) {
		return ErrDisconnected
	}
	nm.switchMu.Lock()
	defer nm.switchMu.Unlock()
	c := nm.conn.Load()
	var err error
	if c.session.Load() != 0 && !c.isolated.Load() {
		c.leaving.Store(true) // DISCONNECTED is now the answer we want, not a reason to reconnect
		r := acquireRequest(wire.OpDisconnect, pc.attempts, pc.timeout, pc.deadline)
		r.encodeEmpty(wire.OpDisconnect)
		res := c.roundTrip(r, pc.ctx)
		if res.err != nil {
			err = res.err
		}
	}
	c.close()
	return err
}

// lost reports whether l's session is gone: the server restarted or forgot it, or the
// client moved to another server.
func (nm *NetMutex) lost(l *Lock) bool {
	c := nm.conn.Load()
	return l.conn != c || c.session.Load() != l.session
}

// ttlMillis converts ttl for the wire, rounding up: the server's lease must not end
// before the one the caller asked for.
func (nm *NetMutex) ttlMillis(ttl time.Duration) (uint32, error) {
	if ttl <= 0 {
		return 0, ErrWrongTTL
	}
	ms := (ttl + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxUint32 {
		return 0, ErrWrongTTL
	}
	if c := nm.conn.Load(); c != nil {
		if si := c.server.Load(); si != nil && si.maxTTL > 0 && ms*time.Millisecond > si.maxTTL {
			return 0, ErrTTLTooLong
		}
	}
	return uint32(ms), nil
}

// resultErr maps a result other than success to its error.
func resultErr(res result) error {
	if res.err != nil {
		return res.err
	}
	switch res.op {
	case wire.OpLocked:
		return ErrLocked
	case wire.OpIsolated:
		return ErrIsolated
	case wire.OpDisconnected:
		return ErrLockLost
	case wire.OpRedirect:
		return ErrNoServers
	case wire.OpError:
		switch res.code {
		case wire.CodeBadTTL:
			return ErrWrongTTL
		case wire.CodeTTLTooLong:
			return ErrTTLTooLong
		case wire.CodeLockDelay:
			return ErrLockDelay
		case wire.CodeNotHeld:
			return ErrLockLost
		case wire.CodeBadIsolationInfo:
			return ErrLongIsolationInfo
		}
	}
	return ErrRefused
}

// Connecting and moving between servers.

// connect dials every address at once and keeps the first that answers with a session,
// following redirects.
func (nm *NetMutex) connect(pc *pacing, addrs []string) (*serverConn, error) {
	notify := make(chan struct{}, 1)
	var conns []*serverConn
	dialed := map[string]bool{}
	dial := func(a string) {
		if dialed[a] || len(dialed) >= wire.MaxServers {
			return
		}
		dialed[a] = true
		if c, err := dialServer(a, nm.info, time.Duration(pc.timeout), notify, nm.unbatched); err == nil {
			conns = append(conns, c)
		}
	}
	for _, a := range addrs {
		dial(a)
	}
	wait := time.Duration(pc.attempts) * time.Duration(pc.timeout)
	if pc.deadline != 0 {
		wait = min(wait, time.Duration(pc.deadline-nanotime()))
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var done <-chan struct{}
	if pc.ctx != nil {
		done = pc.ctx.Done()
	}
	var winner *serverConn
	for winner == nil && len(conns) > 0 {
		for i := 0; i < len(conns) && winner == nil; i++ {
			if conns[i].session.Load() != 0 {
				winner = conns[i]
			} else if p := conns[i].redirect.Swap(nil); p != nil {
				dial(*p)
			}
		}
		if winner != nil {
			break
		}
		select {
		case <-notify:
		case <-timer.C:
			conns = closeAll(conns, nil)
		case <-done:
			conns = closeAll(conns, nil)
		}
	}
	closeAll(conns, winner)
	if winner == nil {
		if pc.ctx != nil && pc.ctx.Err() != nil {
			return nil, pc.ctx.Err()
		}
		return nil, ErrNoServers
	}
	return winner, nil
}

func closeAll(conns []*serverConn, keep *serverConn) []*serverConn {
	for _, c := range conns {
		if c != keep {
			c.close()
		}
	}
	return nil
}

// switchTo moves to the first of addrs that answers, unless another call already moved
// away from old. It reports whether the NetMutex is now on a server other than old.
func (nm *NetMutex) switchTo(old *serverConn, addrs []string, pc *pacing) bool {
	nm.switchMu.Lock()
	defer nm.switchMu.Unlock()
	if nm.closed.Load() {
		return false
	}
	if nm.conn.Load() != old {
		return true
	}
	sub := *pc
	sub.attempts = min(pc.attempts, 3)
	c, err := nm.connect(&sub, addrs)
	if err != nil {
		return false
	}
	nm.conn.Store(c)
	nm.servers = c.clusterAddrs(nm.servers)
	old.close()
	return true
}

// failover leaves a server that stopped answering for another one of the cluster.
func (nm *NetMutex) failover(old *serverConn, pc *pacing) {
	nm.switchMu.Lock()
	var others []string
	for _, a := range nm.servers {
		if a != old.addr {
			others = append(others, a)
		}
	}
	nm.switchMu.Unlock()
	if len(others) > 0 {
		nm.switchTo(old, others, pc)
	}
}
