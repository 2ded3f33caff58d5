package netmutex

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// queueServer answers a connection's writes as a server with one busy key would:
// QUEUED to every waiting LOCK, OK to UNLOCK after dropping the first one; the test
// pushes the grant itself.
type queueServer struct {
	m  *memConn
	mu sync.Mutex
	// per op: the ids and lock ids seen, in order
	locks, unlocks []wire.Frame
}

func (q *queueServer) onWrite(d []byte) {
	dg, err := wire.Parse(d, false)
	if err != nil {
		return
	}
	var f wire.Frame
	for dg.Next(&f) {
		id := f.ID
		q.mu.Lock()
		switch f.Op {
		case wire.OpLock:
			q.locks = append(q.locks, wire.Frame{ID: f.ID, Flags: f.Flags})
			q.m.reply(answer(func(b []byte) []byte { return wire.AppendEmpty(b, wire.OpQueued, id) }))
		case wire.OpUnlock:
			q.unlocks = append(q.unlocks, wire.Frame{ID: f.ID, LockID: f.LockID})
			if len(q.unlocks) > 1 { // the first clean-up UNLOCK is lost
				q.m.reply(answer(func(b []byte) []byte { return wire.AppendOK(b, id, 0) }))
			}
		}
		q.mu.Unlock()
	}
}

func (q *queueServer) seen() (locks, unlocks []wire.Frame) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]wire.Frame(nil), q.locks...), append([]wire.Frame(nil), q.unlocks...)
}

func waitingRequest(c *serverConn, attempts int, timeout time.Duration, deadline int64) *request {
	r := c.requests.acquire(wire.OpLock, attempts, int64(timeout), deadline)
	(&params{op: wire.OpLock, key: "busy", ttlMs: 1000, wait: true}).encode(r)
	return r
}

// TestParkedWaiterTakesPushedGrant: a LOCK answered QUEUED outlives its attempts and the
// retransmit window, is sent again now and then with its id, and takes the grant the
// server pushes.
func TestParkedWaiterTakesPushedGrant(t *testing.T) {
	m := newMemConn()
	q := &queueServer{m: m}
	m.onWrite = q.onWrite
	c := connectedConn(t, m)
	c.server.Store(&serverInfo{sessionTimeout: time.Minute, retransmitWindow: 100 * time.Millisecond})
	r := waitingRequest(c, 2, 50*time.Millisecond, 0)
	done := make(chan result, 1)
	go func() { done <- c.roundTrip(r, nil) }()

	time.Sleep(700 * time.Millisecond) // 14 attempt timeouts, 7 retransmit windows
	locks, _ := q.seen()
	require.GreaterOrEqual(t, len(locks), 2, "a parked LOCK is sent again now and then")
	assert.LessOrEqual(t, len(locks), 6, "slowly: every %v", time.Duration(parkedResend))
	for _, f := range locks {
		assert.Equal(t, locks[0].ID, f.ID, "with the same id")
		assert.Equal(t, uint16(wire.LockWait), f.Flags)
	}
	select {
	case res := <-done:
		t.Fatalf("the waiter gave up while queued: %+v", res)
	default:
	}
	id := locks[0].ID
	m.reply(answer(func(b []byte) []byte { return wire.AppendOK(b, id, 77) })) // pushed
	res := <-done
	require.NoError(t, res.err)
	assert.Equal(t, wire.OpOK, res.op)
	assert.Equal(t, uint64(77), res.fence)
}

// TestCancelledWaiterLeavesTheQueue: a waiter whose caller gives up sends an UNLOCK of
// its LOCK's id, and sends it again until the server answers.
func TestCancelledWaiterLeavesTheQueue(t *testing.T) {
	m := newMemConn()
	q := &queueServer{m: m}
	m.onWrite = q.onWrite
	c := connectedConn(t, m)
	ctx, cancel := context.WithCancel(context.Background())
	r := waitingRequest(c, 3, 50*time.Millisecond, 0)
	done := make(chan result, 1)
	go func() { done <- c.roundTrip(r, ctx) }()
	require.Eventually(t, func() bool { l, _ := q.seen(); return len(l) > 0 }, 5*time.Second, time.Millisecond)
	cancel()
	res := <-done
	require.ErrorIs(t, res.err, context.Canceled)
	require.Eventually(t, func() bool { _, u := q.seen(); return len(u) >= 2 }, 5*time.Second, time.Millisecond,
		"the clean-up UNLOCK is retried after a loss")
	locks, unlocks := q.seen()
	for _, u := range unlocks {
		assert.Equal(t, locks[0].ID, u.LockID, "it names the waiting LOCK")
		assert.Equal(t, unlocks[0].ID, u.ID, "one request, retransmitted")
	}
	time.Sleep(300 * time.Millisecond)
	_, after := q.seen()
	assert.Len(t, after, len(unlocks), "answered: not sent again")
}
