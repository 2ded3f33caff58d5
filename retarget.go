// Stage: failover within a session. When the server stops answering, refuses datagrams
// (nothing listens there) or answers NOT_LEADER, the send loop connects the same socket
// to another server of the cluster and sends every outstanding request again with its
// id. The session, its request ids, the in-flight table and the sealer stay, and so does
// the source address: what the servers bind the session to (docs/PROTOCOL.md, Failover).
package netmutex

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// BUG(failover): A connection keeps its session across servers only where its UDP socket
// can be connected again (unix, windows) and to servers of its address family; its
// source address stays the one chosen for the first server, so servers must be reachable
// from it. Otherwise it fails over on a new session, and the old session's locks are
// lost.

// errOtherFamily refuses to move a socket to an address of the other family: the
// source address would change, and the session is bound to it.
var errOtherFamily = errors.New("netmutex: server address of another family than the socket's")

// After every server of the cluster in a row answered NOT_LEADER or refused the
// datagrams, an election is under way: the send loop pauses before the next round,
// 25 ms after the first such round, doubling up to 200 ms. An election takes a few
// hundred milliseconds; the first rounds find its winner soon after it is elected, and
// the longest pause still costs each server only a few datagrams a second per client.
const (
	roundPauseMin = int64(25 * time.Millisecond)
	roundPauseMax = int64(200 * time.Millisecond)
)

// roundPause is the pause after the nth such round in a row, from 0.
func roundPause(n int) int64 { return min(roundPauseMin<<min(n, 8), roundPauseMax) }

// signals carry what the receive loop learns about the server to the send loop, which
// alone decides where the socket points.
type signals struct {
	// Set by the receive loop, taken by the send loop.
	notLeader   atomic.Bool            // a waiting request or the last TOUCH drew NOT_LEADER
	unreachable atomic.Bool            // the socket reported ECONNREFUSED: nothing listens there
	served      atomic.Bool            // a reply other than NOT_LEADER came: the server serves
	leader      atomic.Pointer[string] // a probe drew REDIRECT: the leader's address
	serving     atomic.Bool            // a probe drew COOKIE: the probed server serves
	// Set by the send loop, read by the receive loop.
	probe atomic.Uint64 // the nonce of the last probe CONNECT, 0 = none yet
	touch atomic.Uint64 // the id of the last TOUCH
	gen   atomic.Uint32 // moves to another address: the receive loop learns the new prefix
}

// mover is where the socket points and how the server there behaved. Owned by the send
// loop.
type mover struct {
	cur      netip.AddrPort // where the socket is connected
	from     *serverInfo    // the CONNECTED that names and addrs come from
	names    []string       // the cluster's addresses, as the servers gave them
	addrs    []netip.AddrPort
	gen      uint32 // moves so far, to another address or back; a request's copy carries it
	since    int64  // when the socket was pointed at cur
	heardAt  int64  // when a datagram was last noticed since then, 0 = none
	frames   uint64 // framesIn when last sampled
	round    int    // servers in a row that answered NOT_LEADER or refused datagrams
	pauses   int    // rounds in a row that ended in a pause
	resendAt int64  // 0, or when what is outstanding goes to cur: the end of a pause
	touchAt  int64  // when the last TOUCH left, 0 once something was heard after it
	timeout  int64  // how long an unanswered TOUCH may wait, ns
}

// currentAddr is the address the socket points at now. Any goroutine may call it.
func (c *serverConn) currentAddr() string { return *c.target.Load() }

// holding reports whether a pause is running: nothing is sent to the server meanwhile.
func (c *serverConn) holding(now int64) bool { return c.mv.resendAt > now }

// noteHeard notes whether anything came from the server since the last call. The send
// loop calls it first thing in every round, before it sends: what it notices came
// before anything sent in the same round, whose time is the same now.
func (c *serverConn) noteHeard(now int64) {
	m := &c.mv
	if f := c.stats.framesIn.Load(); f != m.frames {
		m.frames, m.heardAt = f, now
		if m.touchAt != 0 && now > m.touchAt {
			m.touchAt = 0
		}
	}
}

// sampleServed notes whether the server served since the last call: the rounds of
// refusals then start anew. The scan calls it, once a millisecond at most: the flag
// is written by the receive loop, and a write per round would bounce its cache line.
func (c *serverConn) sampleServed() {
	if c.sig.served.Load() {
		c.sig.served.Store(false)
		c.mv.round, c.mv.pauses = 0, 0
	}
}

// silent reports whether r has waited a whole attempt on this server without a single
// datagram coming back from it since it left, while another server could be asked.
func (c *serverConn) silent(r *request, now int64) bool {
	return c.mv.heardAt <= r.lastSent && now-r.lastSent >= c.period(r) && c.canLeave()
}

// period is how long one attempt of r waits before its next copy.
func (c *serverConn) period(r *request) int64 {
	if r.parked {
		return parkedResendFor(r.ttl)
	}
	return r.timeout
}

// touchSilent reports whether the last TOUCH went unanswered for a whole attempt while
// another server could be asked. It forgets the TOUCH once that is decided.
func (c *serverConn) touchSilent(now int64) bool {
	m := &c.mv
	if m.touchAt == 0 || now-m.touchAt < m.timeout {
		return false
	}
	m.touchAt = 0
	return c.canLeave()
}

// steer takes the receive loop's news and moves the socket when it must. With no news
// it costs a few atomic loads.
func (c *serverConn) steer(now int64, session uint64) {
	s := &c.sig
	if p := s.leader.Load(); p != nil && s.leader.CompareAndSwap(p, nil) && session != 0 {
		c.followLeader(now, *p)
	}
	if s.serving.Load() && s.serving.Swap(false) && c.holding(now) {
		c.mv.resendAt = now // the probed server serves: the pause is over
	}
	if s.notLeader.Load() && s.notLeader.Swap(false) && session != 0 && !c.holding(now) {
		// During a pause nothing was sent here: a NOT_LEADER then is a late one.
		c.leave(now, true)
	}
	if (s.unreachable.Load() && s.unreachable.Swap(false)) || c.pk.refused {
		c.pk.refused = false
		if session != 0 && !c.holding(now) && c.outstanding() && c.canLeave() {
			c.leave(now, false)
		}
	}
}

// leave moves on from a server that answered NOT_LEADER (notLeader) or refused our
// datagrams. After a whole round of such answers it pauses, and probes for a leader.
// If the socket cannot move, waiting requests learn NOT_LEADER and their callers move
// to another connection (cluster.go).
func (c *serverConn) leave(now int64, notLeader bool) {
	m := &c.mv
	c.refreshCluster()
	m.round++
	resendAt, full := now, m.round >= max(len(m.names), 1)
	if full {
		resendAt = now + roundPause(m.pauses)
		m.round = 0
		m.pauses++
	}
	switch {
	case c.moveNext(now, resendAt, notLeader):
		if full {
			c.sendProbe()
		}
	case notLeader:
		c.failWaiting(result{op: wire.OpError, code: wire.CodeNotLeader})
	}
}

// followLeader moves to the leader a probe named.
func (c *serverConn) followLeader(now int64, name string) {
	a, ok := resolve(name)
	if !ok || a == c.mv.cur {
		return // a REDIRECT to the server that just said NOT_LEADER: the pause runs
	}
	if !c.pointAt(now, a, name, now) {
		c.failWaiting(result{op: wire.OpRedirect, addr: name}) // cluster.go switches over
	}
}

// moveNext points the socket at the next server of the cluster after the current one,
// or at the current one again when selfOK and no other can be reached by connecting the
// socket again; resendAt is when the outstanding requests go there. It reports whether
// the socket points somewhere anew.
func (c *serverConn) moveNext(now, resendAt int64, selfOK bool) bool {
	m := &c.mv
	c.refreshCluster()
	n := len(m.names)
	i := -1
	for j, a := range m.addrs {
		if a == m.cur {
			i = j
			break
		}
	}
	blocked := false
	for k := 1; k <= n; k++ {
		j := (i + k) % n
		if !m.addrs[j].IsValid() {
			a, ok := resolve(m.names[j])
			if !ok {
				continue
			}
			m.addrs[j] = a
		}
		if m.addrs[j] == m.cur {
			if k == n && selfOK && !blocked {
				return c.pointAt(now, m.cur, m.names[j], resendAt)
			}
			continue
		}
		if c.pointAt(now, m.addrs[j], m.names[j], resendAt) {
			return true
		}
		blocked = true
	}
	return false
}

// pointAt connects the socket to a, unless it is there already, and starts over there:
// what is outstanding is sent again at resendAt.
func (c *serverConn) pointAt(now int64, a netip.AddrPort, name string, resendAt int64) bool {
	m := &c.mv
	if a != m.cur {
		// What is packed for the old server leaves first, to the old server.
		c.pk.closeDatagram()
		c.pk.write()
		if err := c.bc.retarget(a); err != nil {
			return false
		}
		c.stats.moves.Add(1)
		c.target.Store(&name) // before gen: the receive loop reads it when gen moves
		c.sig.gen.Add(1)      // another server: the receive loop learns its prefix
	}
	m.cur = a
	c.target.Store(&name)
	m.gen++
	m.since, m.heardAt, m.touchAt = now, 0, 0
	m.frames = c.stats.framesIn.Load()
	m.resendAt = resendAt
	return true
}

// resendDue sends what is outstanding to the server the socket now points at, once a
// move's pause is over: the same ids, as copies that do not count as attempts. With
// nothing outstanding after a move without pause, a TOUCH asks the new server whether
// it serves.
func (c *serverConn) resendDue(now int64, session uint64) {
	m := &c.mv
	if m.resendAt == 0 || now < m.resendAt || session == 0 {
		return
	}
	paused := m.resendAt > m.since
	m.resendAt = 0
	sent := false
	for _, r := range c.list {
		switch {
		case r.id == 0 && r.state.Load() == stateQueued:
			c.send(r, now, session)
			sent = true
		case r.gen != m.gen && r.session == session && r.state.Load() == r.id:
			c.pack(r, now, session)
			c.stats.retransmits.Add(1)
			sent = true
		}
	}
	if !sent && !paused {
		c.touch(now, session)
	}
}

// outstanding reports whether anything sent to the server still waits for it.
func (c *serverConn) outstanding() bool {
	if c.mv.touchAt != 0 {
		return true
	}
	for _, r := range c.list {
		if r.id != 0 && r.state.Load() == r.id {
			return true
		}
	}
	return false
}

// failWaiting completes every request still waiting with res: the socket cannot move
// where it must, so the callers move to a new connection (cluster.go).
func (c *serverConn) failWaiting(res result) {
	for _, r := range c.list {
		if r.id == 0 || r.state.Load() != r.id {
			continue
		}
		res.id, res.session, res.sent = r.id, r.session, r.firstSent
		if r.complete(r.id, res) {
			c.table.release(r.id, r)
		}
	}
}

// sendProbe asks the server the socket points at who leads: a CONNECT without cookie,
// which a follower answers with REDIRECT (or NOT_LEADER when it knows no leader) and a
// leader with COOKIE, so it never opens a session.
func (c *serverConn) sendProbe() {
	nonce := rand.Uint64() | 1
	c.sig.probe.Store(nonce)
	c.pk.addDatagram(c.connectDatagram(nonce, nil), 1)
}

// touch sends a TOUCH, which keeps the session alive and tells whether the server
// still answers.
func (c *serverConn) touch(now int64, session uint64) {
	id := c.takeID()
	c.sig.touch.Store(id)
	c.mv.touchAt = now
	b := c.pk.reserve(session, c.floor, wire.FrameHeaderSize)
	*b = wire.AppendEmpty(*b, wire.OpTouch, id)
}

// refreshCluster takes the cluster's addresses from the latest CONNECTED. Names that
// are not literal addresses are resolved when first moved to, not here: a name lookup
// can block, and most sessions never move.
func (c *serverConn) refreshCluster() {
	m := &c.mv
	si := c.server.Load()
	if si == m.from {
		return
	}
	m.from = si
	m.names, m.addrs = m.names[:0], m.addrs[:0]
	if si == nil {
		return
	}
	for _, s := range si.servers {
		a, ok := literal(s.Addr)
		if !ok {
			a = netip.AddrPort{}
		}
		m.names = append(m.names, s.Addr)
		m.addrs = append(m.addrs, a)
	}
}

// canLeave reports whether the socket may leave a server that went silent: the cluster
// names the current address and another. A server reached under an address it does not
// advertise (a proxy, a NAT) may be any of them, and moving could lead back to it under
// another path, from which the session's datagrams are not taken; such a connection
// fails over the old way, on a new session (cluster.go).
func (c *serverConn) canLeave() bool {
	m := &c.mv
	c.refreshCluster()
	here, other := false, false
	for _, a := range m.addrs {
		if a == m.cur {
			here = true
		} else {
			other = true // an unresolved name included: moveNext resolves it
		}
	}
	return here && other
}

// resolve turns a server's address into the socket's terms, looking a name up if it
// must; false for an address nothing can be sent to.
func resolve(name string) (netip.AddrPort, bool) {
	if a, err := netip.ParseAddrPort(name); err == nil {
		return usable(a)
	}
	ua, err := net.ResolveUDPAddr("udp", name)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return usable(ua.AddrPort())
}

// literal is resolve without the lookup: false for a name.
func literal(name string) (netip.AddrPort, bool) {
	a, err := netip.ParseAddrPort(name)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return usable(a)
}

// usable writes an IPv4 address as such, however it was parsed, so that addresses
// compare equal, and reports whether datagrams can be sent to it.
func usable(a netip.AddrPort) (netip.AddrPort, bool) {
	a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	return a, a.IsValid() && a.Port() != 0 && !a.Addr().IsUnspecified()
}
