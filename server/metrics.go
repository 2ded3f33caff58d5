// Metrics: the counters the loop folds in once per batch (requests by op and outcome,
// frames per datagram, datagrams per system call), kept in plain atomics, and the
// Prometheus collector that reads them, with the Stats counters and the loop's gauges,
// at scrape time. The hot path never touches the Prometheus library.

package server

import (
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// Request kinds as metric labels, indexed by Kind (kindIsolationDone is not a request).
var kindNames = [...]string{
	kindConnect:    "connect",
	kindPing:       "ping",
	kindTouch:      "touch",
	kindDisconnect: "disconnect",
	kindLock:       "lock",
	kindUpdate:     "update",
	kindUnlock:     "unlock",
	kindUnlockAll:  "unlockall",
	kindLockMany:   "lockmany",
}

const numKinds = len(kindNames)

// Outcomes of a request: its reply, an error reply's code, or none (dropped: below the
// session's ack floor).
const (
	outOK = iota
	outPong
	outConnected
	outQueued
	outLocked
	outIsolated
	outDisconnected
	outRedirect
	outDropped
	outOtherError
	outError // + wire.Code, for the codes in errorNames
)

var outcomeNames = [...]string{
	outOK: "ok", outPong: "pong", outConnected: "connected", outQueued: "queued",
	outLocked: "locked", outIsolated: "isolated", outDisconnected: "disconnected",
	outRedirect: "redirect", outDropped: "dropped", outOtherError: "error",
	outError + int(wire.CodeBadRequest):       "bad_request",
	outError + int(wire.CodeBadTTL):           "bad_ttl",
	outError + int(wire.CodeTTLTooLong):       "ttl_too_long",
	outError + int(wire.CodeLockDelay):        "lock_delay",
	outError + int(wire.CodeNotHeld):          "not_held",
	outError + int(wire.CodeStale):            "stale",
	outError + int(wire.CodeBadIsolationInfo): "bad_isolation_info",
	outError + int(wire.CodeAuth):             "auth",
	outError + int(wire.CodeTooManySessions):  "too_many_sessions",
	outError + int(wire.CodeTooManyLocks):     "too_many_locks",
	outError + int(wire.CodeRateLimited):      "rate_limited",
	outError + int(wire.CodeForbidden):        "forbidden",
	outError + int(wire.CodeServerFull):       "server_full",
	outError + int(wire.CodeTooManyWaiters):   "too_many_waiters",
	outError + int(wire.CodeNotLeader):        "not_leader",
}

const numOutcomes = len(outcomeNames)

// outcomeOf is the outcome index of r.
func outcomeOf(r *result) int {
	switch r.Op {
	case wire.OpOK:
		return outOK
	case wire.OpPong:
		return outPong
	case wire.OpConnected:
		return outConnected
	case wire.OpQueued:
		return outQueued
	case wire.OpLocked:
		return outLocked
	case wire.OpIsolated:
		return outIsolated
	case wire.OpDisconnected:
		return outDisconnected
	case wire.OpRedirect:
		return outRedirect
	case wire.OpError:
		if i := outError + int(r.Code); r.Code > 0 && i < numOutcomes {
			return i
		}
	}
	return outOtherError
}

// Reasons a datagram is dropped as bad: they partition Stats.BadDatagrams.
const (
	badMalformed   = iota // oversized, or not a valid datagram (wire.Parse)
	badAuth               // did not authenticate and drew no ERROR AUTH
	badAuthLimited        // did not authenticate; its ERROR AUTH was over the per-address rate
	badPeer               // another address, key or nonce prefix than its session's
	badReplay             // a sealed counter the session's replay window had seen
	numBad
)

var badNames = [numBad]string{"malformed", "auth", "auth_rate_limited", "peer", "replay"}

// dropBad counts a datagram dropped as bad for reason.
func (c *counters) dropBad(reason int) {
	c.bad.Add(1)
	c.badReason[reason].Add(1)
}

// hist is a histogram with fixed buckets, in atomics: counts[i] observations at or below
// bounds[i] and above bounds[i-1], the last one above every bound; sum in the unit
// observed.
type hist struct {
	bounds []float64
	counts []atomic.Uint64
	sum    atomic.Uint64
}

func newHist(bounds ...float64) *hist {
	return &hist{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// snapshot returns the count, the sum and the cumulative bucket counts, as Prometheus
// wants them. Read while observations go on, it may be off by the ones in flight.
func (h *hist) snapshot(scale float64) (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = make(map[float64]uint64, len(h.bounds))
	for i, b := range h.bounds {
		count += h.counts[i].Load()
		buckets[b] = count
	}
	count += h.counts[len(h.bounds)].Load()
	return count, float64(h.sum.Load()) * scale, buckets
}

// Powers of two, 1 to 256: frames per datagram and datagrams per system call.
var pow2Bounds = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256}

const numPow2 = 9 // len(pow2Bounds)

// pow2Bucket is the bucket of n ≥ 1 among pow2Bounds (the last one: above them all).
func pow2Bucket(n int) int {
	return min(bits.Len(uint(n-1)), numPow2)
}

// batchCounts are the loop's per-batch tallies, folded into the atomics once per batch
// (flush): the hot path adds to plain memory.
type batchCounts struct {
	ops     [numKinds * numOutcomes]uint32
	touched []uint16 // indexes of ops that are not 0
	fpd     [numPow2 + 1]uint32
	fpdSum  uint64
}

// metrics are the atomics behind the Prometheus collector (see collector.go).
type metrics struct {
	ops           [numKinds * numOutcomes]atomic.Uint64
	framesPerDgm  *hist // request frames per datagram that drew any
	dgmsPerRecv   *hist // datagrams per receive call that returned any
	dgmsPerSend   *hist // datagrams per send call
	isoDuration   *hist // seconds of isolation runs; sum in nanoseconds
	sessions      atomic.Int64
	locksHeld     atomic.Int64
	waiters       atomic.Int64
	isoRunning    atomic.Int64
	isoQueued     atomic.Int64
	sessionsEnded atomic.Uint64
	fencesLeft    atomic.Uint64
}

func newMetrics() *metrics {
	return &metrics{
		framesPerDgm: newHist(pow2Bounds...),
		dgmsPerRecv:  newHist(pow2Bounds...),
		dgmsPerSend:  newHist(pow2Bounds...),
		isoDuration:  newHist(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
	}
}

// observe adds one observation of n ≥ 1 to a pow2Bounds histogram.
func (h *hist) observe(n int) {
	h.counts[pow2Bucket(n)].Add(1)
	h.sum.Add(uint64(n))
}

// observeDuration adds d to a histogram of seconds whose sum is in nanoseconds.
func (h *hist) observeDuration(d time.Duration) {
	i := 0
	for i < len(h.bounds) && d.Seconds() > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(uint64(max(d, 0)))
}

// frames notes a datagram that drew n request frames.
func (b *batchCounts) frames(n int) {
	if n > 0 {
		b.fpd[pow2Bucket(n)]++
		b.fpdSum += uint64(n)
	}
}

// count notes a request of kind k with outcome o.
func (b *batchCounts) count(k kind, o int) {
	if int(k) >= numKinds {
		return
	}
	i := int(k)*numOutcomes + o
	if b.ops[i] == 0 {
		b.touched = append(b.touched, uint16(i))
	}
	b.ops[i]++
}

// flush adds the batch's tallies to m and clears them.
func (b *batchCounts) flush(m *metrics) {
	for _, i := range b.touched {
		m.ops[i].Add(uint64(b.ops[i]))
		b.ops[i] = 0
	}
	b.touched = b.touched[:0]
	if b.fpdSum > 0 {
		for i, n := range b.fpd {
			if n > 0 {
				m.framesPerDgm.counts[i].Add(uint64(n))
				b.fpd[i] = 0
			}
		}
		m.framesPerDgm.sum.Add(b.fpdSum)
		b.fpdSum = 0
	}
}

// foldResults tallies the batch's requests by kind and outcome: the answered ones from
// s.results (in the order of s.cmds; pushed grants, Tag -1, are not requests), and the
// commands that drew no reply as dropped.
func (s *Server) foldResults() {
	b := &s.batch
	cmds := s.cmds
	ci := 0
	for i := range s.results {
		r := &s.results[i]
		if r.Tag < 0 {
			continue
		}
		for ci < len(cmds) && (cmds[ci].Tag != r.Tag || cmds[ci].ID != r.ID) {
			if cmds[ci].Tag >= 0 {
				b.count(cmds[ci].kind, outDropped)
			}
			ci++
		}
		if ci == len(cmds) {
			break
		}
		b.count(cmds[ci].kind, outcomeOf(r))
		if s.debug {
			s.logSession(&cmds[ci], r)
		}
		ci++
	}
	for ; ci < len(cmds); ci++ {
		if cmds[ci].Tag >= 0 {
			b.count(cmds[ci].kind, outDropped)
		}
	}
	b.flush(s.metrics)
}

// publish stores the loop's gauges for the collector: once per batch or tick.
func (s *Server) publish() {
	m := s.metrics
	m.sessions.Store(int64(s.m.Sessions()))
	m.locksHeld.Store(int64(s.m.Locks()))
	m.waiters.Store(int64(s.m.Waiters()))
	m.isoRunning.Store(int64(s.isoRuns.running))
	m.isoQueued.Store(int64(s.isoRuns.queued()))
	m.sessionsEnded.Store(s.m.SessionsEnded())
	m.fencesLeft.Store(s.m.FencesLeft())
}
