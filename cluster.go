// Stage: choosing a server. Connecting to the first of several addresses that answers,
// following a REDIRECT, re-sending on a new session when the server forgot ours, and
// failing over to another server of the cluster when one stops answering.
package netmutex

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// maxHops bounds how often one call follows a redirect or re-sends on a new session.
const maxHops = 4

// exchange runs one operation to its result. A LOCK or UNLOCKALL answered with
// DISCONNECTED (the server forgot the session) is sent again on the new session; a
// REDIRECT is followed. Within the session, the connection itself moves between the
// cluster's servers (retarget.go); when it cannot (NOT_LEADER where the socket cannot
// be moved, or every attempt unanswered), the call goes on over a new connection to
// another server, on a new session: the last resort.
func (nm *NetMutex) exchange(pc *pacing, p *params) (result, *serverConn) {
	for hop := 0; ; hop++ {
		c := nm.conn.Load()
		if c.isolated.Load() {
			return result{op: wire.OpIsolated}, c
		}
		r := c.requests.acquire(p.op, pc.attempts, pc.timeout, pc.deadline)
		p.encode(r)
		res := c.roundTrip(r, pc.ctx)
		if hop < maxHops && !nm.closed.Load() {
			switch {
			case res.op == wire.OpRedirect:
				if nm.switchTo(c, []string{res.addr}, pc) {
					continue
				}
			case res.op == wire.OpDisconnected && (p.op == wire.OpLock || p.op == wire.OpLockMany || p.op == wire.OpUnlockAll):
				continue
			case res.op == wire.OpError && res.code == wire.CodeNotLeader:
				if nm.failover(c, pc) {
					continue
				}
			case res.err == ErrTooMuchRetries:
				nm.failover(c, pc)
			}
		}
		return res, c
	}
}

// connect dials every address at once and keeps the first that answers with a session,
// following redirects. When none does, the error says why: a server's refusal (ErrAuth,
// ErrRateLimited, ErrTooManySessions), or ErrNoServers with the addresses tried and why
// they could not be dialed.
func (nm *NetMutex) connect(pc *pacing, addrs []string) (*serverConn, error) {
	notify := make(chan struct{}, 1)
	var conns []*serverConn
	var dialErrs []error
	var refused wire.Code
	noteRefusals := func() {
		for _, c := range conns {
			if code := wire.Code(c.refused.Load()); code != 0 {
				refused = code
			}
		}
	}
	dialed := map[string]bool{}
	dial := func(a string) {
		if dialed[a] || len(dialed) >= wire.MaxServers {
			return
		}
		dialed[a] = true
		cfg := connConfig{info: nm.info, keys: nm.keys, connectWait: time.Duration(pc.timeout), timeout: nm.timeout, notify: notify, unbatched: nm.unbatched, spinWait: nm.spinWait}
		c, err := dialServer(a, cfg)
		if err != nil {
			dialErrs = append(dialErrs, err)
			return
		}
		conns = append(conns, c)
	}
	for _, a := range addrs {
		dial(a)
	}
	wait := time.Duration(pc.attempts) * time.Duration(pc.timeout)
	if pc.deadline != 0 {
		wait = min(wait, time.Duration(pc.deadline-nanotime()))
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var done <-chan struct{}
	if pc.ctx != nil {
		done = pc.ctx.Done()
	}
	var winner *serverConn
	for winner == nil && len(conns) > 0 {
		for i := 0; i < len(conns) && winner == nil; i++ {
			if conns[i].session.Load() != 0 {
				winner = conns[i]
			} else if p := conns[i].redirect.Swap(nil); p != nil {
				dial(*p)
			}
		}
		if winner != nil {
			break
		}
		select {
		case <-notify:
		case <-timer.C:
			noteRefusals()
			conns = closeAll(conns, nil)
		case <-done:
			noteRefusals()
			conns = closeAll(conns, nil)
		}
	}
	closeAll(conns, winner)
	if winner == nil {
		if pc.ctx != nil && pc.ctx.Err() != nil {
			return nil, pc.ctx.Err()
		}
		if refused != 0 {
			return nil, codeErr(refused)
		}
		if len(dialErrs) > 0 {
			return nil, fmt.Errorf("%w: tried %s: %w", ErrNoServers, strings.Join(addrs, ", "), errors.Join(dialErrs...))
		}
		return nil, fmt.Errorf("%w: tried %s", ErrNoServers, strings.Join(addrs, ", "))
	}
	return winner, nil
}

func closeAll(conns []*serverConn, keep *serverConn) []*serverConn {
	for _, c := range conns {
		if c != keep {
			c.close()
		}
	}
	return nil
}

// switchTo moves to the first of addrs that answers, unless another call already moved
// away from old. It reports whether the NetMutex is now on a server other than old.
func (nm *NetMutex) switchTo(old *serverConn, addrs []string, pc *pacing) bool {
	nm.switchMu.Lock()
	defer nm.switchMu.Unlock()
	if nm.closed.Load() {
		return false
	}
	if nm.conn.Load() != old {
		return true
	}
	sub := *pc
	sub.attempts = min(pc.attempts, 3)
	c, err := nm.connect(&sub, addrs)
	if err != nil {
		return false
	}
	nm.conn.Store(c)
	nm.servers = c.clusterAddrs(nm.servers)
	old.close()
	return true
}

// failover leaves a server that stopped answering, or is not the leader, for another
// one of the cluster, and reports whether the NetMutex moved.
func (nm *NetMutex) failover(old *serverConn, pc *pacing) bool {
	nm.switchMu.Lock()
	var others []string
	for _, a := range nm.servers {
		if a != old.currentAddr() {
			others = append(others, a)
		}
	}
	nm.switchMu.Unlock()
	return len(others) > 0 && nm.switchTo(old, others, pc)
}

// clusterAddrs returns the cluster's addresses as the server told them, or fallback.
func (c *serverConn) clusterAddrs(fallback []string) []string {
	si := c.server.Load()
	if si == nil || len(si.servers) == 0 {
		return fallback
	}
	addrs := make([]string, 0, len(si.servers))
	for _, s := range si.servers {
		addrs = append(addrs, s.Addr)
	}
	return addrs
}
