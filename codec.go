// Stage: the client's side of the wire. An operation is encoded into its request's
// pooled buffer (with request id 0: the send loop patches the id in), and a reply frame
// is turned into a result, and a result into the caller's error.
package netmutex

import (
	"fmt"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// params is one operation's content.
type params struct {
	op     wire.Op
	key    string
	keys   []string // LOCKMANY
	lockID uint64
	ttlMs  uint32
	wait   bool   // LOCK, LOCKMANY: wait in the queue
	waitMs uint32 // its bound, 0 = none
}

// encode writes p's frame into r's buffer.
func (p *params) encode(r *request) {
	b := r.frame.B[:0]
	switch p.op {
	case wire.OpLock:
		r.key, r.wait, r.ttl = p.key, p.wait, int64(p.ttlMs)*int64(time.Millisecond) // for the clean-up UNLOCK if the caller gives up on it
		if p.wait {
			b = wire.AppendLockWait(b, 0, p.ttlMs, p.waitMs, p.key)
		} else {
			b = wire.AppendLock(b, 0, p.ttlMs, p.key)
		}
	case wire.OpLockMany:
		r.keys, r.wait, r.ttl = p.keys, p.wait, int64(p.ttlMs)*int64(time.Millisecond)
		b = wire.AppendLockMany(b, 0, p.ttlMs, p.wait, p.waitMs, p.keys)
	case wire.OpUpdate:
		b = wire.AppendUpdate(b, 0, p.lockID, p.ttlMs, p.key)
	case wire.OpUnlock:
		b = wire.AppendUnlock(b, 0, p.lockID, p.key)
	default:
		b = wire.AppendEmpty(b, p.op, 0)
	}
	r.frame.B = b
}

// replyResult turns a decoded reply frame into a result.
func replyResult(f *wire.Frame, session uint64) result {
	res := result{op: f.Op, id: f.ID, session: session}
	switch f.Op {
	case wire.OpOK:
		res.fence = f.Fence
	case wire.OpError:
		res.code = f.Code
	case wire.OpRedirect:
		res.addr = string(f.Addr) // rare: a follower's answer
	}
	return res
}

// codeErr maps an ERROR code to its error.
func codeErr(code wire.Code) error { return resultErr(result{op: wire.OpError, code: code}) }

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
		case wire.CodeAuth:
			return ErrAuth
		case wire.CodeTooManySessions:
			return ErrTooManySessions
		case wire.CodeRateLimited:
			return ErrRateLimited
		case wire.CodeTooManyLocks:
			return ErrTooManyLocks
		case wire.CodeServerFull:
			return ErrServerFull
		case wire.CodeForbidden:
			return ErrForbidden
		case wire.CodeTooManyWaiters:
			return ErrTooManyWaiters
		case wire.CodeNotLeader:
			// Only where no server of the cluster would lead within the call's
			// attempts: no answer, as far as the caller is concerned.
			return ErrTooMuchRetries
		}
	}
	return refusedErr(res)
}

// refusedErr is ErrRefused naming the reply that drew it: a code no error of the API
// stands for, or a reply of a kind the request never draws. Off the hot path: only a
// refusal allocates.
func refusedErr(res result) error {
	if res.op == wire.OpError {
		return fmt.Errorf("%w (ERROR code %d)", ErrRefused, res.code)
	}
	return fmt.Errorf("%w (reply opcode %#x)", ErrRefused, uint8(res.op))
}
