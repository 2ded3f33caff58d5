// Stage: the CONNECT handshake. The send loop sends CONNECT (again, with a cookie, or
// after a back-off); the receive loop takes what answers it and gives the connection its
// session.
package netmutex

import (
	"math/rand/v2"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// maybeConnect sends a CONNECT when none is in flight or the last one went unanswered.
// Retransmissions start at connRetryMin and double up to the caller's timeout: a
// server that is just starting is found at once, a dead one is not flooded. Only the
// send loop calls it.
func (c *serverConn) maybeConnect(now int64) {
	withCookie := c.cookieNew.Swap(false)
	if !withCookie && c.connSent != 0 && now-c.connSent < c.connBackoff {
		return
	}
	switch {
	case c.connSent == 0:
		c.cookie.Store(nil)
		c.connNonce.Store(rand.Uint64() | 1) // a new nonce per session wanted
		c.connBackoff = connRetryMin
	case !withCookie:
		c.connBackoff = min(2*c.connBackoff, c.connWait.Load())
	}
	c.connSent = now
	var cookie []byte
	if p := c.cookie.Load(); p != nil {
		cookie = p[:]
	}
	c.pk.addDatagram(c.connectDatagram(c.connNonce.Load(), cookie), 1)
}

// connectDatagram builds a datagram of one CONNECT, padded to the least size a server
// takes, in the packer's next buffer.
func (c *serverConn) connectDatagram(nonce uint64, cookie []byte) []byte {
	buf := wire.BeginDatagram(c.pk.ownDatagram(), wire.Header{})
	buf = wire.AppendConnect(buf, nonce, c.info, cookie)
	if pad := wire.MinConnectDatagram - (len(buf) + wire.TrailerSize); pad > 0 {
		buf = wire.AppendPad(buf, max(pad, wire.FrameHeaderSize))
	}
	return wire.FinishDatagram(buf)
}

// handleConnectReply takes what answers our CONNECT: CONNECTED, REDIRECT, a COOKIE to
// send it again with, or an ERROR that refuses it. Only the receive loop calls it.
func (c *serverConn) handleConnectReply(f *wire.Frame, prefix [seal.PrefixSize]byte) {
	if f.ID != c.connNonce.Load() || c.session.Load() != 0 {
		return // a duplicate, or the reply to an earlier attempt
	}
	switch f.Op {
	case wire.OpCookie:
		var cookie [wire.CookieSize]byte
		copy(cookie[:], f.Cookie)
		c.cookie.Store(&cookie)
		c.cookieNew.Store(true)
		c.wakeIfSleeping()
		return
	case wire.OpError:
		// A refusal: Open reports it if no server grants a session in time. The
		// CONNECT keeps being retried meanwhile: a rate limit or a full table passes.
		// NOT_LEADER is no refusal: a follower that knows no leader yet, during an
		// election; another address, or this one later, will answer.
		if f.Code != wire.CodeNotLeader {
			c.refused.Store(uint32(f.Code))
		}
		return
	}
	if f.Op == wire.OpRedirect {
		addr := string(f.Addr)
		c.redirect.Store(&addr)
	} else {
		con := f.Connected()
		c.server.Store(&serverInfo{
			maxTTL:           time.Duration(con.MaxTTLMs) * time.Millisecond,
			sessionTimeout:   time.Duration(con.SessionTimeoutMs) * time.Millisecond,
			retransmitWindow: time.Duration(con.RetransmitWindowMs) * time.Millisecond,
			servers:          con.Servers,
		})
		c.serverPrefix, c.window, c.heard = prefix, seal.Window{}, true
		c.prefixAt = c.currentAddr()
		c.session.Store(con.Session)
	}
	select {
	case c.connected <- struct{}{}:
	default:
	}
	c.askScan() // the scan sends what waited for a session and fails what the old one left
}
