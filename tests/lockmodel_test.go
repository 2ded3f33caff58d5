package tests

import (
	"fmt"
	"math"
	"sort"

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
// holder's lease has surely run out (the server's lock-delay is there for that).

type opKind uint8

const (
	opLock opKind = iota + 1
	opUpdate
	opUnlock
	opRestart
)

func (k opKind) String() string {
	return [...]string{"?", "Lock", "Update", "Unlock", "Restart"}[k]
}

// Outcomes.
type outcome uint8

const (
	resOK        outcome = iota + 1 // Lock granted (Fence set), Update or Unlock succeeded
	resLocked                       // ErrLocked
	resLockDelay                    // ErrLockDelay: not granted now; an earlier attempt may have been, on a server that then crashed
	resIsolated                     // ErrIsolated
	resLockLost                     // ErrLockLost
	resUnknown                      // gave up: any effect or none
)

func (o outcome) String() string {
	return [...]string{"?", "ok", "locked", "lock-delay", "isolated", "lock-lost", "unknown"}[o]
}

type lockInput struct {
	Kind  opKind
	Key   string
	Fence uint64 // Update, Unlock: the fence of the lock acted on
	TTL   int64  // ns: Lock, Update
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
	// MaxFence is the highest fence granted so far on the key; CrashFence the highest
	// granted before the last restart (every lock at or below it was lost).
	MaxFence, CrashFence uint64
}

const never = math.MaxInt64

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
			case opLock:
				if out.Res == resOK {
					return fmt.Sprintf("Lock(%s, %dms) -> fence %d", in.Key, in.TTL/1e6, out.Fence)
				}
				return fmt.Sprintf("Lock(%s, %dms) -> %v", in.Key, in.TTL/1e6, out.Res)
			case opUpdate:
				return fmt.Sprintf("Update(%s#%d, %dms) -> %v", in.Key, in.Fence, in.TTL/1e6, out.Res)
			}
			return fmt.Sprintf("Unlock(%s#%d) -> %v", in.Key, in.Fence, out.Res)
		},
		DescribeState: func(state any) string {
			s := state.(keyState)
			switch {
			case s.Ghost:
				return fmt.Sprintf("ghost (max %d, crash %d)", s.MaxFence, s.CrashFence)
			case s.Holder == 0:
				return fmt.Sprintf("free (max %d, crash %d)", s.MaxFence, s.CrashFence)
			}
			return fmt.Sprintf("#%d lease end in [%.3fs, %.3fs] (max %d, crash %d)",
				s.Holder, float64(s.Lo)/1e9, float64(s.Hi)/1e9, s.MaxFence, s.CrashFence)
		},
	}
	return nm.ToModel()
}

// partitionByKey splits the history by key; restarts go into every partition.
func partitionByKey(h []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	var restarts []porcupine.Operation
	for _, op := range h {
		in := op.Input.(lockInput)
		if in.Kind == opRestart {
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
	mayBeFree := func(r int64) bool { return s.Holder == 0 || s.Ghost || s.Lo <= r }
	// mayBeHeld: at some moment from c on the key may still have been held on the
	// server (a lost lock is held by nobody there).
	mayBeHeld := func(c int64) bool {
		return s.Ghost || (s.Holder != 0 && !lost(s.Holder) && c < s.Hi)
	}
	ghost := func() keyState {
		g := s
		g.Holder, g.Ghost, g.Lo, g.Hi = 0, true, 0, 0
		return g
	}
	switch in.Kind {
	case opRestart:
		n := s
		n.CrashFence = s.MaxFence
		if n.Ghost || n.Holder == hidden {
			n.Holder, n.Ghost = 0, false
		}
		return one(n)

	case opLock:
		switch out.Res {
		case resOK:
			if out.Fence <= s.MaxFence || !mayBeFree(in.Ret) {
				return none
			}
			return one(keyState{Holder: out.Fence, Lo: in.Call + in.TTL, Hi: in.Ret + in.TTL + slack,
				MaxFence: out.Fence, CrashFence: s.CrashFence})
		case resLocked:
			if !mayBeHeld(in.Call) {
				return none
			}
			return one(s)
		case resIsolated:
			// Refused because the session is isolated, or granted with every reply
			// lost until the lock expired and isolated the session: a holder nobody
			// knows, whose lease ran out by r.
			if mayBeFree(in.Ret) && in.Call+in.TTL <= in.Ret {
				h := s
				h.Holder, h.Ghost, h.Lo, h.Hi = hidden, false, in.Call+in.TTL, in.Ret
				return []any{s, h}
			}
			return one(s)
		case resLockDelay, resUnknown:
			// Not granted, or granted (possibly on a server that crashed since).
			if mayBeFree(never) {
				return []any{s, ghost()}
			}
			return one(s)
		}
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
				return one(ghost()) // extended, released, or left to expire: unknown
			}
			return one(s)
		}
		return none
	}
	return none
}
