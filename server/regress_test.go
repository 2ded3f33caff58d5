package server

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// TestMachineLockDelayDuplicateNotGrantedLate: a LOCK answered LOCK_DELAY is final for
// the client (ErrLockDelay); a copy of it that reaches the server after the lock-delay
// (a duplicate or a retransmission delayed by the network, its id still at or above
// the ack floor) must not be granted. A late grant is a lock nobody knows it holds: it
// expires after its TTL and isolates the session, which runs the isolation command
// against a client that did nothing wrong and, without a command, takes away every
// other lock the session holds before its TTL. Found by reading machine.lock while
// writing the simulation; the same holds for LOCK_DELAY from an exhausted fence
// reservation.
func TestMachineLockDelayDuplicateNotGrantedLate(t *testing.T) {
	s := newSim(t, func(c *machineConfig) { c.LockDelayUntil = 2000 * ms })
	sess := s.connect(1)
	wantErr(t, s.one(lockCmd(sess, 1, 500, "k")), wire.CodeLockDelay)
	s.now = 2500 * ms // the delay is over; the client's floor has not moved past id 1 yet
	r := s.one(lockCmd(sess, 1, 500, "k"))
	require.NotEqual(t, wire.OpOK, r.Op, "the copy of a LOCK answered LOCK_DELAY was granted (fence %d) after the delay", r.Fence)
	wantFree(t, s.m, "k", "held by a LOCK its client was told was not granted")
}
