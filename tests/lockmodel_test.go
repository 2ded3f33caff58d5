package tests

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// The sequential specification of one key of the lock service, for porcupine.
//
// Time enters through the operations themselves: every input carries its own call and
// return times (monotonic nanoseconds of the test process, the same clock the server
// reads on this machine). A grant seen in [c, r] with TTL T cannot expire before c+T
// and has surely expired after r+T+slack, where slack bounds how late a duplicate of
// the request can still reach the server (an UPDATE duplicate extends the lease again).
//
// A call that gave up has an unknown outcome lasting to the end of the history: its
// return time is infinite and the model lets it have taken effect or not. Its effect
// on the key is modelled as a "ghost" holder that may hold or release the key at any
// moment until the next definite grant, since the client also sends a clean-up UNLOCK
// or abandons the session.
//
// A server restart (SIGKILL, then a new process on the same data directory) is an
// operation of its own, present in every key's partition: every lock granted before it
// is lost (the holder learns ErrLockLost), but no new grant may come before the old
// holder's lease has surely run out (the server's lock-delay is there for that). The
// restart's TTL is the length of that lock-delay: no grant returns before c+TTL, and
// until r+TTL a try-Lock may be refused LOCKED on a key nobody holds, because waiting
// Acquires queued on it during the lock-delay are served first.
//
// A failover of a cluster (no leader from Call to Ret) is in every partition too: nothing
// is lost, but the log's time, in which leases are counted, stands still meanwhile, so a
// lease held across it may end up to Ret-Call later in real time.
//
// Acquire (a waiting LOCK) linearizes at its grant, like a Lock that succeeds. One that
// ended with its context (deadline or cancel) is "cancelled": the client's clean-up
// UNLOCK leaves the queue or releases the grant, but asynchronously, so the waiter may
// still be granted after Acquire returned and hold the key until the UNLOCK arrives.
// A single linearization point cannot say "granted after the return", so a cancelled
// Acquire is an unknown outcome, like a call that gave up: return time infinite, effect
// a ghost or none. What keeps that from being too weak is that a ghost has a time: a
// ghost that took the key from a definite holder took it after that holder's lease
// could end (Since), so no grant or refusal it explains may come before that; and a
// cancelled Acquire's "return" for porcupine is not infinite but the latest moment the
// server could still grant it (cancelledReturn): the client asks the server to drop the
// waiter a little after the caller's deadline, so a grant after that is a bug.

type opKind uint8

const (
	opLock opKind = iota + 1
	opUpdate
	opUnlock
	opRestart
	opAcquire
	// opFailover: a cluster served no leader from Call to Ret. The log's time stands
	// still meanwhile, so a lease held then ends up to TTL (Ret-Call) later in real time.
	opFailover
)

func (k opKind) String() string {
	return [...]string{"?", "Lock", "Update", "Unlock", "Restart", "Acquire", "Failover"}[k]
}

// everyKey: the operation is in every key's partition (a restart, a failover).
func (k opKind) everyKey() bool { return k == opRestart || k == opFailover }

// Outcomes.
type outcome uint8

const (
	resOK        outcome = iota + 1 // Lock granted (Fence set), Update or Unlock succeeded
	resLocked                       // ErrLocked
	resLockDelay                    // ErrLockDelay: not granted now; an earlier attempt may have been, on a server that then crashed
	resIsolated                     // ErrIsolated
	resLockLost                     // ErrLockLost
	resUnknown                      // gave up: any effect or none
	resCancelled                    // Acquire: its context ended; granted meanwhile (and released by the clean-up) or not
)

func (o outcome) String() string {
	return [...]string{"?", "ok", "locked", "lock-delay", "isolated", "lock-lost", "unknown", "cancelled"}[o]
}

type lockInput struct {
	Kind  opKind
	Key   string
	Fence uint64 // Update, Unlock: the fence of the lock acted on
	TTL   int64  // ns: Lock, Acquire, Update; Restart: the lock-delay
	Call  int64
	Ret   int64 // the real return time, even for an unknown outcome
	// CrashDuring: a restart overlapped [Call, Ret]. An Update or Unlock that then
	// returns ErrLockLost may have taken effect on the old server before the crash
	// (its reply lost), the retransmission meeting the new server.
	CrashDuring bool
}

type lockOutput struct {
	Res   outcome
	Fence uint64 // granted fence
}

// keyState is the state of one key. It is a comparable value: porcupine compares and
// caches states with ==.
type keyState struct {
	Holder uint64 // fence of the definite holder, 0 = none
	Ghost  bool   // a call with unknown outcome may hold the key
	Lo, Hi int64  // bounds of the holder's lease end
	// Since: a ghost that took the key from a holder took it no earlier than this (the
	// holder's lease could not end before); 0 when it is the holder itself gone unknown.
	Since int64
	// MaxFence is the highest fence granted so far on the key; CrashFence the highest
	// granted before the last restart (every lock at or below it was lost).
	MaxFence, CrashFence uint64
	// The last restart's lock-delay: no grant before GrantFrom; until WaitersUntil
	// waiters queued in it may make a free key answer LOCKED.
	GrantFrom, WaitersUntil int64
}

const never = math.MaxInt64

// clientWaitSlack is how much longer than its caller's deadline a waiting LOCK asks the
// server to keep it (the root package's waitSlackMs): the server removes the waiter
// then, so it grants nothing later.
const clientWaitSlack = int64(time.Second)

// cancelledReturn is porcupine's return time for an Acquire that ended with its context
// at ret: the latest moment the server could grant it. The wait bound is computed when
// the LOCK is encoded (at c or later) as what is left of the deadline (at most ret-c)
// plus clientWaitSlack, and counts from the copy that reaches the server, sent by ret
// and delayed by at most slack.
func cancelledReturn(c, ret, slack int64) int64 {
	return ret + (ret - c) + clientWaitSlack + slack
}

// hidden is the Holder of a grant whose fence nobody learnt (see Lock → isolated).
const hidden = math.MaxUint64

// lockModel returns the model; slack is how much later than r+T a lease may end.
func lockModel(slack int64) porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: partitionByKey,
		Init:      func() []any { return []any{keyState{}} },
		Step: func(state, input, output any) []any {
			return stepKey(state.(keyState), input.(lockInput), output.(lockOutput), slack)
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(lockInput), output.(lockOutput)
			switch in.Kind {
			case opRestart:
				return "Restart"
			case opFailover:
				return fmt.Sprintf("Failover(%dms)", in.TTL/1e6)
			case opLock, opAcquire:
				if out.Res == resOK {
					return fmt.Sprintf("%v(%s, %dms) -> fence %d", in.Kind, in.Key, in.TTL/1e6, out.Fence)
				}
				return fmt.Sprintf("%v(%s, %dms) -> %v", in.Kind, in.Key, in.TTL/1e6, out.Res)
			case opUpdate:
				return fmt.Sprintf("Update(%s#%d, %dms) -> %v", in.Key, in.Fence, in.TTL/1e6, out.Res)
			}
			return fmt.Sprintf("Unlock(%s#%d) -> %v", in.Key, in.Fence, out.Res)
		},
		DescribeState: func(state any) string {
			s := state.(keyState)
			switch {
			case s.Ghost:
				return fmt.Sprintf("ghost since %.3fs (max %d, crash %d)", float64(s.Since)/1e9, s.MaxFence, s.CrashFence)
			case s.Holder == 0:
				return fmt.Sprintf("free (max %d, crash %d)", s.MaxFence, s.CrashFence)
			}
			return fmt.Sprintf("#%d lease end in [%.3fs, %.3fs] (max %d, crash %d)",
				s.Holder, float64(s.Lo)/1e9, float64(s.Hi)/1e9, s.MaxFence, s.CrashFence)
		},
	}
	return nm.ToModel()
}

// partitionByKey splits the history by key; restarts and failovers go into every
// partition.
func partitionByKey(h []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	var restarts []porcupine.Operation
	for _, op := range h {
		in := op.Input.(lockInput)
		if in.Kind.everyKey() {
			restarts = append(restarts, op)
			continue
		}
		byKey[in.Key] = append(byKey[in.Key], op)
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out [][]porcupine.Operation
	for _, k := range keys {
		out = append(out, append(byKey[k], restarts...))
	}
	return out
}

func stepKey(s keyState, in lockInput, out lockOutput, slack int64) []any {
	one := func(st keyState) []any { return []any{st} }
	none := []any(nil)
	lost := func(fence uint64) bool { return fence <= s.CrashFence }
	// mayBeFree: at some moment up to r the key may have been free.
	mayBeFree := func(r int64) bool {
		switch {
		case s.Ghost:
			return s.Since <= r
		case s.Holder == 0:
			return true
		}
		return s.Lo <= r
	}
	// mayBeRefused: at some moment in [c, r] a try-LOCK may have found the key held on
	// the server (a lost lock is held by nobody there), or waiters queued in the
	// lock-delay ahead of it.
	mayBeRefused := func(c, r int64) bool {
		return (s.Ghost && s.Since <= r) || (s.Holder != 0 && !s.Ghost && !lost(s.Holder) && c < s.Hi) ||
			c < s.WaitersUntil
	}
	// granted: the state after a definite grant seen in [c, r].
	granted := func() []any {
		if out.Fence <= s.MaxFence || !mayBeFree(in.Ret) || in.Ret < s.GrantFrom {
			return none
		}
		n := s
		n.Holder, n.Ghost, n.Lo, n.Hi, n.Since = out.Fence, false, in.Call+in.TTL, in.Ret+in.TTL+slack, 0
		n.MaxFence = out.Fence
		return one(n)
	}
	// ghost: an unknown call took the key, once it was free: after the holder's lease
	// could end, the previous ghost took it, or the lock-delay ended.
	ghost := func() keyState {
		g := s
		since := s.GrantFrom
		switch {
		case s.Ghost:
			since = max(since, s.Since)
		case s.Holder != 0:
			since = max(since, s.Lo)
		}
		g.Holder, g.Ghost, g.Lo, g.Hi, g.Since = 0, true, 0, 0, since
		return g
	}
	// isolatedGrant: a waiting or try LOCK answered ISOLATED may have been granted with
	// every reply lost until the lock expired and isolated the session: a holder nobody
	// knows, whose lease ran out by r.
	isolatedGrant := func() []any {
		from := max(in.Call, s.GrantFrom)
		if mayBeFree(in.Ret) && from+in.TTL <= in.Ret {
			h := s
			h.Holder, h.Ghost, h.Lo, h.Hi, h.Since = hidden, false, from+in.TTL, in.Ret, 0
			return []any{s, h}
		}
		return one(s)
	}
	switch in.Kind {
	case opRestart:
		n := s
		n.CrashFence = s.MaxFence
		if n.Ghost || n.Holder == hidden {
			n.Holder, n.Ghost, n.Since = 0, false, 0
		}
		n.GrantFrom, n.WaitersUntil = in.Call+in.TTL, in.Ret+in.TTL+slack
		return one(n)

	case opFailover:
		// Nothing is lost; a lease held now may end up to TTL later. A hidden holder's
		// bound is the isolation its session was seen to suffer: not moved.
		n := s
		if !n.Ghost && n.Holder != 0 && n.Holder != hidden {
			n.Hi += in.TTL
		}
		return one(n)

	case opLock:
		switch out.Res {
		case resOK:
			return granted()
		case resLocked:
			var next []any
			if mayBeRefused(in.Call, in.Ret) {
				next = append(next, s)
			}
			if in.CrashDuring {
				// As LOCK_DELAY: a first copy may have been granted on the server that
				// crashed (its reply lost), and the copy re-sent on a new session after
				// DISCONNECTED refused (the key held, or waited for during the
				// lock-delay). Seen once in CI: another client's LOCKED then had to be
				// that grant.
				next = append(next, ghost())
			}
			if len(next) == 0 {
				return none
			}
			return next
		case resIsolated:
			return isolatedGrant()
		case resLockDelay, resUnknown:
			// Not granted, or granted (possibly on a server that crashed since).
			return []any{s, ghost()}
		}
		return none

	case opAcquire:
		switch out.Res {
		case resOK:
			return granted() // at the grant, which waited for the key to be free
		case resIsolated:
			return isolatedGrant()
		case resCancelled, resUnknown:
			// Never granted, or granted (before or after the return) and then released
			// by the clean-up UNLOCK, or left to expire: a ghost from some moment on.
			return []any{s, ghost()}
		}
		// LOCKED or LOCK_DELAY: a waiting LOCK waits through both.
		return none

	case opUpdate, opUnlock:
		mine := !s.Ghost && s.Holder == in.Fence
		switch out.Res {
		case resOK:
			if !mine || lost(in.Fence) || in.Call >= s.Hi {
				return none
			}
			n := s
			if in.Kind == opUnlock {
				n.Holder, n.Lo, n.Hi = 0, 0, 0
			} else {
				n.Lo, n.Hi = in.Call+in.TTL, in.Ret+in.TTL+slack
			}
			return one(n)
		case resLockLost:
			// The server forgot the lock: only a restart does that here (an expired lock
			// isolates its session instead). Either the lock was lost before this call
			// took effect, or the call took effect and a crash during it lost the
			// lock (and the reply).
			var next []any
			if lost(in.Fence) {
				next = append(next, s)
			}
			if in.CrashDuring && mine && !lost(in.Fence) && in.Call < s.Hi {
				n := s
				if in.Kind == opUnlock {
					n.Holder, n.Lo, n.Hi = 0, 0, 0
				} else {
					n.Lo, n.Hi = in.Call+in.TTL, in.Ret+in.TTL+slack
				}
				next = append(next, n)
			}
			return next
		case resIsolated:
			// The session was isolated: its lock expired (by r at the latest), perhaps
			// after this very Update shortened it (its reply lost).
			if mine {
				if s.Lo > in.Ret && !(in.Kind == opUpdate && in.Call+in.TTL <= in.Ret) {
					return none
				}
				n := s
				n.Holder, n.Lo, n.Hi = 0, 0, 0
				return one(n)
			}
			return one(s)
		case resUnknown:
			if mine {
				// Extended, released, or left to expire: unknown. The holder itself,
				// so no Since: it held the key all along.
				g := s
				g.Holder, g.Ghost, g.Lo, g.Hi, g.Since = 0, true, 0, 0, 0
				return one(g)
			}
			return one(s)
		}
		return none
	}
	return none
}
