// The machine's inputs and outputs: the Commands Apply takes, the Results and Isolations
// it gives back, and the configuration it is made with.

package server

import (
	"github.com/netmutex/netmutex/internal/wire"
)

// kind is the kind of a command given to machine.Apply.
type kind uint8

// Command kinds. The first ones mirror the request opcodes of docs/PROTOCOL.md;
// kindIsolationDone is the loop telling the machine that a session's isolation command
// has finished (or was given up on).
const (
	kindConnect kind = iota + 1
	kindPing
	kindTouch
	kindDisconnect
	kindLock
	kindUpdate
	kindUnlock
	kindUnlockAll
	kindIsolationDone
	kindLockMany
)

// command is one input of machine.Apply. Key and Info may alias a receive buffer: the
// machine copies what it keeps.
type command struct {
	kind kind
	// Admin: the sender may send UNLOCKALL (an admin key, or loopback without keys).
	Admin bool
	// LOCK, LOCKMANY: wait in the keys' queues (wire.LockWait) for at most WaitMs
	// milliseconds (0: no bound but the session's life).
	Wait     bool
	KeyCount uint8 // LOCKMANY: the number of keys in Key
	Tag      int32 // opaque to the machine, copied into the Result (the loop: the index of the sender's address in its batch)
	// NewSession is the id a CONNECT's session gets if the machine creates one: drawn at
	// random by the loop (the machine reads no randomness), never 0.
	NewSession uint64
	// Peer is the far end of a CONNECT, kept with the session it creates (machine.peerInfo);
	// the machine reads only Peer.Addr, for the per-address session cap.
	peerInfo *peerInfo
	Session  uint64 // the datagram header's session; for kindIsolationDone the isolated session
	Floor    uint64 // the datagram header's ack floor
	ID       uint64 // request id; the nonce for kindConnect
	LockID   uint64 // UPDATE, UNLOCK
	TTLMs    uint32 // LOCK, LOCKMANY, UPDATE
	WaitMs   uint32 // LOCK, LOCKMANY with Wait
	// Key: LOCK, UPDATE, UNLOCK; for LOCKMANY its KeyCount keys as on the wire, each a u8
	// length and its bytes (read with wire.NextKey).
	Key  []byte
	Info []byte // CONNECT: IsolationInfo
}

// result is one reply produced by machine.Apply. A command draws at most one Result;
// commands that are dropped (below the ack floor, kindIsolationDone) draw none. A grant
// to a waiter is a pushed Result: Op OpOK, Tag -1, the waiter's Session, its LOCK's ID
// and the grant's Fence (of the first key for LOCKMANY); the network stage sends it to
// the session's address (machine.peerInfo) unasked.
type result struct {
	Op      wire.Op   // OpConnected, OpPong, OpOK, OpQueued, OpLocked, OpIsolated, OpDisconnected, OpError
	Code    wire.Code // OpError
	Tag     int32     // the command's Tag; -1 for a pushed grant
	Session uint64    // the session the reply belongs to (the new one for OpConnected)
	ID      uint64    // the request id answered
	Fence   uint64    // OpOK
}

// isolation tells the loop to run the isolation command for a session.
type isolation struct {
	Session uint64
	Info    string
}

// machineConfig fixes the limits of a Machine. Times are nanoseconds in the time base of
// the now values given to Apply.
type machineConfig struct {
	MaxTTL int64
	// SessionTimeout closes silent sessions; 0 means never.
	SessionTimeout int64
	// LockDelayUntil: LOCK answers LOCK_DELAY while now < LockDelayUntil.
	LockDelayUntil int64
	// Caps (0: none), each with its refusal: MaxSessions and MaxSessionsPerAddr
	// TOO_MANY_SESSIONS, MaxLocksPerSession TOO_MANY_LOCKS, MaxLocks SERVER_FULL.
	MaxSessions        int
	MaxSessionsPerAddr int
	MaxLocksPerSession int
	MaxLocks           int
	// Waiter caps (0: none), refused TOO_MANY_WAITERS: waiters in one key's queue, and
	// waiting requests of one session. The keys a session waits for count as held against
	// MaxLocksPerSession and MaxLocks, so a grant to a waiter never exceeds those caps and
	// all the waiters of the server take at most MaxLocks keys' worth of memory.
	MaxWaitersPerKey     int
	MaxWaitersPerSession int
	// Isolate says an isolation command is configured: isolated sessions keep their keys
	// until kindIsolationDone. Without one, their locks are released at once.
	Isolate bool
	// FirstFence is the first fence to hand out.
	FirstFence uint64
}
