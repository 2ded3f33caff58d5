// The loop of a cluster node. The leader turns each batch into a log entry instead of
// applying it; every node applies committed entries (handed over by the FSM) to its
// machine with the time the leader stamped in them, and the node that proposed an entry
// sends its replies. Followers answer REDIRECT and NOT_LEADER.

package server

import (
	"net/netip"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// clusterLoop is the loop's state as a cluster node. Owned by the loop.
type clusterLoop struct {
	origin  uint64    // this process's mark on its entries (replica.origin)
	leading bool      // leader, caught up with earlier terms: proposes
	base    int64     // the log time when this node started leading
	since   time.Time // when it started leading
	lastNow int64     // the log time of the last applied entry
	w       entryWriter
	r       entryReader
	dropped uint64 // entries dropped because the proposer was behind
	full    uint64 // datagrams dropped because the next entry was full
	// Entries proposed and not yet applied. At most maxInflight: while that many are
	// on their way through the log, the batches that arrive gather into the next entry,
	// so that under load entries grow instead of multiplying (each costs Raft its own
	// encoding, storing and replication).
	inflight int
	offered  time.Time // when the last entry was proposed
	local    []bool    // per route of the batch: its datagram named no live session
}

// maxInflight is how many of its entries the leader lets be on their way at once: one
// being written and replicated, one behind it, and the batches gathering in the next.
const maxInflight = 2

// inflightLost is how long the leader waits for one of its entries to be applied before
// it counts them lost (an entry Raft failed to commit while this node still led).
const inflightLost = time.Second

// logNow is the leader's time for a new entry. It continues from the last applied
// entry's: the log's time stands still between leaders, so a failover extends every
// lease by the election's length and never shortens one.
func (s *Server) logNow() int64 { return s.cl.base + int64(time.Since(s.cl.since)) }

// serveCluster serves the requests of Raft's goroutines.
func (s *Server) serveCluster() {
	for len(s.clusterReqs) > 0 {
		req := <-s.clusterReqs
		switch req.kind {
		case reqApply:
			for _, b := range req.logs {
				s.applyEntry(b)
			}
			if s.cl.leading {
				s.propose() // what gathered while the applied entries were on their way
			}
		case reqSnapshot:
			req.data = s.encodeSnapshot()
		case reqRestore:
			req.err = s.restoreSnapshot(req.data)
		case reqRole:
			s.setLeading(req.leading)
		}
		close(req.done)
	}
}

// setLeading starts or stops this node's leading. A new leader stamps its first entry
// with a fence floor and runs again the isolation commands that were running on the
// old leader: their end was never logged.
func (s *Server) setLeading(leading bool) {
	if leading == s.cl.leading {
		return
	}
	s.cl.leading = leading
	s.leading.Store(leading)
	s.cl.inflight = 0
	s.cl.w.reset()
	s.deadline = time.Unix(0, 1) // re-arm: the ticks are the leader's
	if !leading {
		s.log.Info("cluster: no longer leading")
		return
	}
	s.cl.base, s.cl.since = s.cl.lastNow+1, time.Now()
	if s.offer(leaderEntry(s.cl.origin, s.logNow(), uint64(time.Now().UnixNano()))) {
		s.cl.inflight++
	}
	n := 0
	for sid, info := range s.m.isolating() {
		s.startIsolation(isolation{Session: sid, Info: info})
		n++
	}
	s.log.Info("cluster: leading", "log_time", time.Duration(s.cl.base), "isolations_resumed", n)
}

// offer hands an entry to the proposer; false if it is behind, and the entry is dropped
// (its requests are retransmitted by their clients).
func (s *Server) offer(b []byte) bool {
	select {
	case s.rep.proposals <- b:
		return true
	default:
		s.cl.dropped++
		s.behind = true
		return false
	}
}

// processCluster is process for a cluster node: the batch's datagrams were checked by
// parse (and, leading, written into s.cl.w); the leader proposes them, a follower
// answers them.
func (s *Server) processCluster() {
	if s.cl.leading {
		s.propose()
		s.results = s.results[:0]
		if len(s.cl.local) > 0 {
			s.answerLocal()
		}
		return
	}
	s.redirect()
}

// propose offers the gathered entry unless maxInflight of this leader's entries are on
// their way. With nothing gathered and nothing in flight it offers an empty entry once
// time alone changes the machine (a lease, a wait bound, a session's time-out ran out:
// machine.NextDue), at most once a tick, so that expiries happen in the log's time.
// Every entry costs an fsync on every node: an empty one offered as soon as the last
// was applied made a cluster with one session write hundreds a second, and one a tick
// while any session existed, fifty.
func (s *Server) propose() {
	if s.cl.inflight >= maxInflight && time.Since(s.cl.offered) > inflightLost {
		s.log.Warn("cluster: entries proposed a second ago were not applied: counted lost", "entries", s.cl.inflight)
		s.cl.inflight = 0
	}
	if s.cl.inflight >= maxInflight {
		return
	}
	if s.cl.w.empty() && (s.cl.inflight > 0 || s.m.Idle() || time.Since(s.cl.offered) < tick || s.logNow() < s.m.NextDue()) {
		return
	}
	if s.offer(s.cl.w.take(s.cl.origin, s.logNow())) {
		s.cl.inflight++
		s.cl.offered = time.Now()
	}
}

// beginCluster starts a batch of a cluster node: the leader opens its entry, a follower
// looks up the leader its REDIRECTs name (nil: none known, and the batch is dropped).
func (s *Server) beginCluster() {
	if s.cl.leading {
		clear(s.cl.local)
		s.cl.local = s.cl.local[:0]
		s.collectIsolations()
		for _, c := range s.cmds {
			s.cl.w.isolationDone(c.Session)
		}
		return
	}
	s.redirectTo = nil
	if m, ok := s.rep.leader(); ok {
		s.leaderHint = m
		s.redirectTo = &s.leaderHint
	}
}

// noteDatagram writes a checked datagram into the leader's entry.
func (s *Server) noteDatagram(from netip.AddrPort, key *seal.Key, nonce seal.Nonce, admin bool, newSession uint64, connect bool, plain []byte) {
	if s.rep != nil && s.cl.leading && !s.cl.w.datagram(from, key, nonce, admin, newSession, connect, plain) {
		s.cl.full++
		s.behind = true
	}
}

// noteRequests writes a datagram of requests into the leader's entry if it names a live
// session. One that names none (anyone can send it) is answered by the loop as the
// machine would (processCluster): it costs no log entry, no fsync on every node.
// Answering from the applied machine is safe: a session a CONNECT still on its way
// through the log will create has not been told its id yet.
func (s *Server) noteRequests(from netip.AddrPort, key *seal.Key, nonce seal.Nonce, admin bool, session uint64, tag int32, plain []byte) {
	if s.rep == nil || !s.cl.leading {
		return
	}
	if s.m.peerInfo(session) == nil {
		for len(s.cl.local) <= int(tag) {
			s.cl.local = append(s.cl.local, false)
		}
		s.cl.local[tag] = true
		return
	}
	s.noteDatagram(from, key, nonce, admin, 0, false, plain)
}

// answerLocal answers the commands of the batch's datagrams that named no live session,
// as the machine does: PING with PONG, the rest with DISCONNECTED.
func (s *Server) answerLocal() {
	for _, c := range s.cmds {
		if c.Tag < 0 || int(c.Tag) >= len(s.cl.local) || !s.cl.local[c.Tag] {
			continue
		}
		r := result{Op: wire.OpDisconnected, Tag: c.Tag, Session: c.Session, ID: c.ID}
		if c.kind == kindPing {
			r.Op = wire.OpPong
		}
		s.results = append(s.results, r)
	}
}

// applyEntry applies one committed entry to the machine. The process that proposed it
// sends its replies and starts its isolation commands; every other node, and the same
// node replaying its log after a restart, only applies it.
func (s *Server) applyEntry(b []byte) {
	r := &s.cl.r
	if err := r.read(b); err != nil {
		s.log.Error("cluster: unreadable log entry skipped", "err", err, "len", len(b))
		return
	}
	now := max(r.now, s.cl.lastNow)
	s.cl.lastNow = now
	mine := r.origin == s.cl.origin
	if mine && s.cl.inflight > 0 {
		s.cl.inflight--
	}
	s.routes = s.routes[:0]
	s.out = s.out[:0]
	s.nEarly = 0
	s.cmds = s.cmds[:0]
	s.results = s.results[:0]
	if r.kind == entryLeader {
		s.m.raiseFence(r.floor)
	}
	for _, sid := range r.isos {
		s.cmds = append(s.cmds, command{kind: kindIsolationDone, Session: sid, Tag: -1})
	}
	var d entryDatagram
	for {
		ok, err := r.next(&d)
		if err != nil {
			s.log.Error("cluster: torn log entry: its remaining datagrams skipped", "err", err)
		}
		if !ok {
			break
		}
		s.entryCommands(&d)
	}
	s.results, s.isos = s.m.Apply(now, s.cmds, s.results, s.isos[:0])
	s.stats.grants.Store(s.m.Grants())
	s.stats.isolations.Store(s.m.Isolations())
	if mine {
		s.encode(false)
		s.send()
		if s.cl.leading {
			for _, iso := range s.isos {
				s.startIsolation(iso)
			}
		}
	}
	s.noteMachine(now)
	s.foldResults()
	s.publish()
}

// entryCommands turns one datagram of an entry into commands, as parse did on the
// leader, its checks already passed. The sender's replay window takes its counter on
// every node, so a new leader refuses what the old one saw.
func (s *Server) entryCommands(d *entryDatagram) {
	dg, err := wire.Parse(d.plain, false)
	if err != nil {
		return // parse on the leader admitted it: not reached
	}
	var key *seal.Key
	if d.flags&dgSealed != 0 && s.keys != nil {
		key = s.keys.Lookup(d.keyID)
	}
	tag := int32(len(s.routes))
	s.routes = append(s.routes, route{d.from, key})
	admin := d.flags&dgAdmin != 0
	var f wire.Frame
	if d.flags&dgConnect != 0 {
		for dg.Next(&f) {
			if f.Op != wire.OpConnect {
				continue
			}
			p := &peerInfo{Addr: d.from, Admin: admin}
			if d.flags&dgSealed != 0 {
				p.KeyID, p.Prefix = d.keyID, d.nonce.Prefix
				p.Window.Accept(d.nonce.Counter)
			}
			s.cmds = append(s.cmds, command{
				kind: kindConnect, NewSession: d.newSession, peerInfo: p, Admin: admin,
				Tag: tag, Session: dg.Session, Floor: dg.Floor, ID: f.ID, Info: f.Info,
			})
			return
		}
		return
	}
	if d.flags&dgSealed != 0 {
		if p := s.m.peerInfo(dg.Session); p != nil {
			p.Window.Accept(d.nonce.Counter) // false on the leader, whose parse took it
		}
	}
	for dg.Next(&f) {
		c := command{Tag: tag, Session: dg.Session, Floor: dg.Floor, ID: f.ID}
		if requestCommand(&c, &f, admin) {
			s.cmds = append(s.cmds, c)
		}
	}
}
