//go:build unix

// Stage: moving a connection's socket to another server (unix): connect(2) again on the
// same UDP socket.

package netmutex

import (
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// reconnect points the connected UDP socket sock at to, keeping its local address and
// port, which the server binds the session to. Every unix lets a UDP socket connect
// again; an address of the other family cannot be reached from the same source address,
// so it gets errOtherFamily.
func reconnect(sock *net.UDPConn, to netip.AddrPort) error {
	raw, err := sock.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	err = raw.Control(func(fd uintptr) {
		local, err := unix.Getsockname(int(fd))
		if err != nil {
			cerr = os.NewSyscallError("getsockname", err)
			return
		}
		a := to.Addr()
		var sa unix.Sockaddr
		switch local.(type) {
		case *unix.SockaddrInet4:
			if !a.Unmap().Is4() {
				cerr = errOtherFamily
				return
			}
			sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: a.Unmap().As4()}
		case *unix.SockaddrInet6:
			if a.Is4() || a.Is4In6() {
				cerr = errOtherFamily
				return
			}
			sa6 := &unix.SockaddrInet6{Port: int(to.Port()), Addr: a.As16()}
			if z := a.Zone(); z != "" {
				ifi, err := net.InterfaceByName(z)
				if err != nil {
					cerr = err
					return
				}
				sa6.ZoneId = uint32(ifi.Index)
			}
			sa = sa6
		default:
			cerr = errOtherFamily
			return
		}
		if err := unix.Connect(int(fd), sa); err != nil {
			cerr = os.NewSyscallError("connect", err)
		}
	})
	if err != nil {
		return err
	}
	return cerr
}
