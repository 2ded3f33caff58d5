//go:build !unix && !windows

// Stage: moving a connection's socket to another server: not offered here.

package netmutex

import (
	"errors"
	"net"
	"net/netip"
)

var errNoReconnect = errors.New("netmutex: a socket cannot be connected again on this system")

// reconnect cannot move a socket on this system: the connection falls back to a new
// connection, and a new session, on another server (cluster.go).
func reconnect(*net.UDPConn, netip.AddrPort) error { return errNoReconnect }
