// Peers: what the network stage knows of a session's far end. The machine keeps a Peer
// with its session and forgets it with the session; only the network stage reads it.

package server

import (
	"net/netip"

	"github.com/netmutex/netmutex/internal/seal"
)

// peerInfo is the far end of a session: the address of its CONNECT and, with keys, the key
// and nonce prefix it seals with and its replay window. Datagrams naming the session
// from elsewhere are dropped before the machine sees them.
type peerInfo struct {
	Addr   netip.AddrPort
	KeyID  uint8 // 0 without keys
	Admin  bool  // may send UNLOCKALL
	Prefix [seal.PrefixSize]byte
	Window seal.Window
}

// sameSender reports whether p and q are the same far end: the same address, key and
// nonce prefix (both nil: a machine driven without a network stage, as in simulations).
func (p *peerInfo) sameSender(q *peerInfo) bool {
	if p == nil || q == nil {
		return p == q
	}
	return p.Addr == q.Addr && p.KeyID == q.KeyID && p.Prefix == q.Prefix
}
