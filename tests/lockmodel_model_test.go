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
	if res == resUnknown {
		r = never
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
