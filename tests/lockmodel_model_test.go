package tests

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/assert"
)

// The model must reject the histories a broken server would produce, or the
// linearizability test proves nothing. Times in ms.

func hop(client int, kind opKind, key string, fence uint64, ttlMs, call, ret int64, res outcome, outFence uint64) porcupine.Operation {
	in := lockInput{Kind: kind, Key: key, Fence: fence, TTL: ttlMs * 1e6, Call: call * 1e6, Ret: ret * 1e6}
	r := ret * 1e6
	switch res {
	case resUnknown:
		r = never
	case resCancelled:
		r = cancelledReturn(call*1e6, ret*1e6, 0)
	}
	return porcupine.Operation{ClientId: client, Input: in, Call: call * 1e6, Output: lockOutput{Res: res, Fence: outFence}, Return: r}
}

func crashDuring(op porcupine.Operation) porcupine.Operation {
	in := op.Input.(lockInput)
	in.CrashDuring = true
	op.Input = in
	return op
}

func TestLockModel(t *testing.T) {
	model := lockModel(0)
	cases := []struct {
		name string
		want porcupine.CheckResult
		h    []porcupine.Operation
	}{
		{"grant, unlock, grant", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(0, opUnlock, "k", 1, 0, 2, 3, resOK, 0),
			hop(1, opLock, "k", 0, 100, 4, 5, resOK, 2),
		}},
		{"two holders at once", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opLock, "k", 0, 100, 2, 3, resOK, 2),
		}},
		{"grant after the lease surely ended", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opLock, "k", 0, 100, 99, 102, resOK, 2),
		}},
		{"grant before the lease could end", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 10, 11, resOK, 1),
			hop(1, opLock, "k", 0, 100, 50, 105, resOK, 2),
		}},
		{"fence goes down", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 5),
			hop(0, opUnlock, "k", 5, 0, 2, 3, resOK, 0),
			hop(1, opLock, "k", 0, 100, 4, 5, resOK, 4),
		}},
		{"locked with nobody holding", porcupine.Illegal, []porcupine.Operation{
			hop(1, opLock, "k", 0, 100, 4, 5, resLocked, 0),
		}},
		{"locked after the lease surely ended", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opLock, "k", 0, 100, 102, 103, resLocked, 0),
		}},
		{"update extends the lease", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(0, opUpdate, "k", 1, 100, 50, 51, resOK, 0),
			hop(1, opLock, "k", 0, 100, 120, 121, resLocked, 0),
		}},
		{"update of an expired lock succeeds", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(0, opUpdate, "k", 1, 100, 150, 151, resOK, 0),
		}},
		{"lock lost without a restart", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(0, opUpdate, "k", 1, 100, 10, 11, resLockLost, 0),
		}},
		{"restart: lock lost, no grant during the old lease", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(9, opRestart, "", 0, 0, 10, 20, resOK, 0),
			hop(0, opUpdate, "k", 1, 100, 30, 31, resLockLost, 0),
			hop(1, opLock, "k", 0, 100, 40, 41, resLockDelay, 0),
			hop(1, opLock, "k", 0, 100, 120, 121, resOK, 70000),
		}},
		{"restart without lock-delay", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(9, opRestart, "", 0, 0, 10, 20, resOK, 0),
			hop(1, opLock, "k", 0, 100, 40, 41, resOK, 70000),
		}},
		{"fence reused after a restart", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 7),
			hop(9, opRestart, "", 0, 0, 10, 20, resOK, 0),
			hop(1, opLock, "k", 0, 100, 120, 121, resOK, 7),
		}},
		{"locked by a holder lost in a restart", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(9, opRestart, "", 0, 0, 10, 20, resOK, 0),
			hop(1, opLock, "k", 0, 100, 30, 31, resLocked, 0),
		}},
		{"a LOCK refused after a crash during it may have held the key before", porcupine.Ok, []porcupine.Operation{
			crashDuring(hop(0, opLock, "k", 0, 300, 0, 300, resLocked, 0)),
			hop(1, opLock, "k", 0, 100, 20, 21, resLocked, 0),
			hop(9, opRestart, "", 0, 300, 100, 200, resOK, 0),
		}},
		{"a LOCK refused with no crash during it held nothing", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 300, 0, 300, resLocked, 0),
			hop(1, opLock, "k", 0, 100, 20, 21, resLocked, 0),
			hop(9, opRestart, "", 0, 300, 100, 200, resOK, 0),
		}},
		{"an unlock lost in a crash may have released the key first", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 500, 0, 1, resOK, 1),
			crashDuring(hop(0, opUnlock, "k", 1, 0, 10, 300, resLockLost, 0)),
			hop(1, opLock, "k", 0, 100, 20, 21, resOK, 2),
			hop(9, opRestart, "", 0, 0, 100, 200, resOK, 0),
		}},
		{"an unlock lost without a crash during it released nothing", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 500, 0, 1, resOK, 1),
			hop(0, opUnlock, "k", 1, 0, 10, 300, resLockLost, 0),
			hop(1, opLock, "k", 0, 100, 20, 21, resOK, 2),
			hop(9, opRestart, "", 0, 0, 100, 200, resOK, 0),
		}},
		{"a lock answered isolated may have held the key until its TTL ran out", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 150, resIsolated, 0),
			hop(1, opLock, "k", 0, 100, 50, 51, resLocked, 0),
			hop(1, opLock, "k", 0, 100, 160, 161, resOK, 2),
		}},
		{"a lock answered isolated held nothing past its return", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 150, resIsolated, 0),
			hop(1, opLock, "k", 0, 100, 160, 161, resLocked, 0),
		}},
		{"an unknown lock may explain a refusal", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 0, resUnknown, 0),
			hop(1, opLock, "k", 0, 100, 30, 31, resLocked, 0),
			hop(1, opLock, "k", 0, 100, 40, 41, resOK, 3),
		}},
		{"isolated before the lease could end", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(0, opUnlock, "k", 1, 0, 10, 11, resIsolated, 0),
		}},
		// Acquire: a waiting LOCK, linearized at its grant.
		{"acquire granted at the unlock it waited for", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 2, 30, resOK, 2),
			hop(0, opUnlock, "k", 1, 0, 10, 11, resOK, 0),
			hop(1, opUpdate, "k", 2, 100, 40, 41, resOK, 0),
			hop(1, opUnlock, "k", 2, 0, 50, 51, resOK, 0),
		}},
		{"acquire granted when the lease could end", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 2, 105, resOK, 2),
		}},
		{"acquire granted while the key is held", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 2, 30, resOK, 2),
			hop(0, opUnlock, "k", 1, 0, 40, 41, resOK, 0),
		}},
		{"acquire granted before the lease could end", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 10, 11, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 20, 90, resOK, 2),
		}},
		{"two acquires granted at once", porcupine.Illegal, []porcupine.Operation{
			hop(0, opAcquire, "k", 0, 100, 0, 5, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 0, 6, resOK, 2),
			hop(0, opUnlock, "k", 1, 0, 10, 11, resOK, 0),
			hop(1, opUnlock, "k", 2, 0, 10, 11, resOK, 0),
		}},
		{"acquire with a lower fence", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 5),
			hop(0, opUnlock, "k", 5, 0, 2, 3, resOK, 0),
			hop(1, opAcquire, "k", 0, 100, 4, 10, resOK, 4),
		}},
		{"acquire answered locked", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 2, 30, resLocked, 0),
		}},
		{"acquire answered lock-delay", porcupine.Illegal, []porcupine.Operation{
			hop(9, opRestart, "", 0, 100, 0, 10, resOK, 0),
			hop(1, opAcquire, "k", 0, 100, 20, 30, resLockDelay, 0),
		}},
		{"acquire waits through the lock-delay", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(9, opRestart, "", 0, 100, 10, 20, resOK, 0),
			hop(1, opAcquire, "k", 0, 100, 25, 115, resOK, 70000),
		}},
		{"acquire granted in the lock-delay of a key nobody held", porcupine.Illegal, []porcupine.Operation{
			hop(9, opRestart, "", 0, 100, 10, 20, resOK, 0),
			hop(1, opAcquire, "k", 0, 100, 25, 105, resOK, 70000),
		}},
		{"try-lock refused in the lock-delay: acquires wait first", porcupine.Ok, []porcupine.Operation{
			hop(9, opRestart, "", 0, 100, 10, 20, resOK, 0),
			hop(1, opAcquire, "k", 0, 100, 25, 130, resOK, 70000),
			hop(2, opLock, "k", 0, 100, 30, 31, resLocked, 0),
		}},
		{"try-lock refused after the lock-delay with nobody holding", porcupine.Illegal, []porcupine.Operation{
			hop(9, opRestart, "", 0, 100, 10, 20, resOK, 0),
			hop(2, opLock, "k", 0, 100, 125, 126, resLocked, 0),
		}},
		{"a cancelled acquire may be granted after it returned, until the clean-up", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 2, 50, resCancelled, 0),
			hop(0, opUnlock, "k", 1, 0, 60, 61, resOK, 0),
			hop(2, opLock, "k", 0, 100, 70, 71, resLocked, 0),
			hop(2, opLock, "k", 0, 100, 80, 81, resOK, 3),
		}},
		{"a cancelled acquire may never have been granted", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 2, 50, resCancelled, 0),
			hop(0, opUnlock, "k", 1, 0, 60, 61, resOK, 0),
			hop(2, opLock, "k", 0, 100, 70, 71, resOK, 3),
		}},
		{"a cancelled acquire takes the key only once it could be free", porcupine.Illegal, []porcupine.Operation{
			hop(0, opLock, "k", 0, 100, 0, 1, resOK, 1),
			hop(1, opAcquire, "k", 0, 100, 2, 40, resCancelled, 0),
			hop(2, opLock, "k", 0, 100, 50, 51, resOK, 2),
		}},
		{"a cancelled acquire explains no refusal past the server's wait bound", porcupine.Illegal, []porcupine.Operation{
			hop(1, opAcquire, "k", 0, 100, 0, 50, resCancelled, 0),
			hop(2, opLock, "k", 0, 100, 1200, 1201, resOK, 3),
			hop(2, opUnlock, "k", 3, 0, 1210, 1211, resOK, 0),
			hop(3, opLock, "k", 0, 100, 1220, 1221, resLocked, 0),
		}},
		{"a cancelled acquire explains a refusal within the server's wait bound", porcupine.Ok, []porcupine.Operation{
			hop(1, opAcquire, "k", 0, 100, 0, 50, resCancelled, 0),
			hop(2, opLock, "k", 0, 100, 60, 61, resOK, 3),
			hop(2, opUnlock, "k", 3, 0, 70, 71, resOK, 0),
			hop(3, opLock, "k", 0, 100, 80, 81, resLocked, 0),
		}},
		{"a cancelled acquire in a restart waits for the lock-delay", porcupine.Illegal, []porcupine.Operation{
			hop(1, opAcquire, "k", 0, 100, 0, 40, resCancelled, 0),
			hop(9, opRestart, "", 0, 100, 50, 60, resOK, 0),
			hop(2, opLock, "k", 0, 100, 70, 71, resOK, 70000),
		}},
		{"an acquire answered isolated may have held the key until its TTL ran out", porcupine.Ok, []porcupine.Operation{
			hop(0, opAcquire, "k", 0, 100, 0, 150, resIsolated, 0),
			hop(1, opLock, "k", 0, 100, 50, 51, resLocked, 0),
			hop(1, opLock, "k", 0, 100, 160, 161, resOK, 2),
		}},
		{"an acquire answered isolated held nothing past its return", porcupine.Illegal, []porcupine.Operation{
			hop(0, opAcquire, "k", 0, 100, 0, 150, resIsolated, 0),
			hop(1, opLock, "k", 0, 100, 160, 161, resLocked, 0),
		}},
		{"keys are independent", porcupine.Ok, []porcupine.Operation{
			hop(0, opLock, "a", 0, 100, 0, 1, resOK, 1),
			hop(1, opLock, "b", 0, 100, 0, 1, resOK, 2),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			assert.Equal(t, c.want, porcupine.CheckOperationsTimeout(model, c.h, 5*time.Second), "porcupine's verdict")
		})
	}
}
