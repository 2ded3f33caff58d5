// The errors every call returns, part of the public API (netmutex.go): sentinels to
// compare with errors.Is, in two kinds, "try later" (ErrLocked) and "you no longer hold
// it, stop" (ErrIsolated), that the README's error table explains.

package netmutex

import (
	"context"
	"errors"
)

// Errors. Compare them with == or errors.Is.
var (
	// ErrDisconnected is returned by every call after Close.
	ErrDisconnected = errors.New("netmutex: disconnected")
	// ErrIsolated is returned once a lock of this client expired while it was still
	// connected: the server has isolated it, and the program must stop working on
	// anything it locked. Every answer that means "you no longer hold it, stop"
	// satisfies errors.Is(err, ErrIsolated): ErrLockLost and ErrLeaseExpired too.
	ErrIsolated = errors.New("netmutex: isolated by the server")
	// ErrLocked is returned by Lock when another holder has the key. Every refusal that
	// means "someone may hold it, try later" satisfies errors.Is(err, ErrLocked):
	// ErrLockDelay and ErrTooManyWaiters too.
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
	// ErrWrongSpinWait is returned by Open for an Options.SpinWait below 0 or over
	// MaxSpinWait.
	ErrWrongSpinWait = errors.New("netmutex: SpinWait out of range")
	// ErrNilLock is returned when a nil *Lock is passed.
	ErrNilLock = errors.New("netmutex: nil Lock")
	// ErrNotLocked is returned by Update and Unlock for a Lock that holds nothing: never
	// acquired, or already unlocked.
	ErrNotLocked = errors.New("netmutex: lock not held")
	// ErrLockInUse is returned by Lock for a Lock that still holds a key.
	ErrLockInUse = errors.New("netmutex: Lock already holds a key")
	// ErrLockLost is returned by Update and Unlock when the server no longer knows the
	// lock: it restarted, or forgot this client's session. The Lock is reset.
	ErrLockLost error = &kindError{"netmutex: lock lost", ErrIsolated}
	// ErrLockDelay is returned by Lock while a server that restarted without a clean
	// stop waits one maximum TTL before granting anything. It satisfies
	// errors.Is(err, ErrLocked). Acquire waits through it.
	ErrLockDelay error = &kindError{"netmutex: server is in its start-up lock-delay", ErrLocked}
	// ErrTooManyWaiters is returned by Acquire when the key's queue, or this session's
	// waiters, are at the server's cap. It satisfies errors.Is(err, ErrLocked).
	ErrTooManyWaiters error = &kindError{"netmutex: too many waiters", ErrLocked}
	// ErrLeaseExpired ends the context Hold gives fn when the lock could not be renewed
	// before the server could let it expire. It satisfies errors.Is(err, ErrIsolated).
	ErrLeaseExpired error = &kindError{"netmutex: lock could not be renewed in time", ErrIsolated}
	// ErrDuplicateKey is returned by AcquireMany for a key named twice.
	ErrDuplicateKey = errors.New("netmutex: key named twice")
	// ErrTooManyKeys is returned by AcquireMany for more than MaxManyKeys keys, or a
	// number of Locks other than the number of keys.
	ErrTooManyKeys = errors.New("netmutex: wrong number of keys")
	// ErrRefused is returned when the server rejected a request as malformed or stale.
	ErrRefused = errors.New("netmutex: request refused by the server")
	// ErrAuth is returned by Open when a server refused this client's authentication:
	// Options.KeyFile is missing, or holds no key the server has, or the server has no
	// keys and this client seals.
	ErrAuth = errors.New("netmutex: authentication refused by the server")
	// ErrTooManySessions is returned by Open when the server's session table, or this
	// address's share of it, is full.
	ErrTooManySessions = errors.New("netmutex: server has too many sessions")
	// ErrRateLimited is returned by Open when this address connects faster than the
	// server allows.
	ErrRateLimited = errors.New("netmutex: connecting too fast for the server")
	// ErrTooManyLocks is returned by Lock when this NetMutex holds as many locks as the
	// server allows one session.
	ErrTooManyLocks = errors.New("netmutex: too many locks held by this session")
	// ErrServerFull is returned by Lock when the server's lock table is full.
	ErrServerFull = errors.New("netmutex: server lock table is full")
	// ErrForbidden is returned by UnlockAll when this client may not release every lock:
	// its key is not marked admin, or, without keys, it is not on the server's host.
	ErrForbidden = errors.New("netmutex: not allowed by the server")
)

// kindError is an error of its own that also answers errors.Is for its kind.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

type timeoutError struct{ msg string }

func (e *timeoutError) Error() string   { return e.msg }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

// errDeadline is what the send loop fails a request with when its context's deadline
// passes first.
var errDeadline = context.DeadlineExceeded
