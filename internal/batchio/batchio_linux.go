//go:build linux && !netmutex_portable

// recvmmsg and sendmmsg on the socket's RawConn: many datagrams per system call.

package batchio

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxBatch is how many datagrams one recvmmsg or sendmmsg moves. 64 datagrams of up to
// 1400 bytes is about 90 KB, well inside a default socket buffer, and enough that the
// syscall's fixed cost is shared out to near nothing.
const MaxBatch = 64

// CanPoll reports that TryReadBatch reads what is queued without blocking, so a loop may
// poll the socket instead of parking (SpinWait).
const CanPoll = true

// mmsgConn drives recvmmsg and sendmmsg on the socket's RawConn, so the goroutine still
// parks in the netpoller on EAGAIN.
type mmsgConn struct {
	raw       syscall.RawConn
	inet6     bool
	connected bool

	// Read side: owned by the one reading goroutine.
	rhdrs  [MaxBatch]unix.Mmsghdr
	riovs  [MaxBatch]unix.Iovec
	rnames [MaxBatch]unix.RawSockaddrInet6
	rcount int
	rgot   int
	rerr   error
	rwait  bool
	readFn func(fd uintptr) bool // bound once: a method value per call would allocate
	loopFn func(fd uintptr) bool
	// ReadLoop's state, read by loopFn.
	lms      []Message
	lhandle  func(n int) ReadAction
	lpolling bool // the last handle said Poll: an empty try is reported, not waited on

	// Write side: owned by the one writing goroutine.
	whdrs   [MaxBatch]unix.Mmsghdr
	wiovs   [MaxBatch]unix.Iovec
	wnames  [MaxBatch]unix.RawSockaddrInet6
	wcount  int
	wsent   int
	werr    error
	writeFn func(fd uintptr) bool
}

var _ Conn = (*mmsgConn)(nil)

func newConn(c *net.UDPConn) (Conn, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	m := &mmsgConn{raw: raw, connected: c.RemoteAddr() != nil}
	var domain int
	var serr error
	if err := raw.Control(func(fd uintptr) {
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, os.NewSyscallError("getsockopt", serr)
	}
	m.inet6 = domain == unix.AF_INET6
	m.readFn = m.doRead
	m.loopFn = m.doLoop
	m.writeFn = m.doWrite
	return m, nil
}

func (m *mmsgConn) ReadBatch(ms []Message) (int, error) { return m.readBatch(ms, true) }

func (m *mmsgConn) TryReadBatch(ms []Message) (int, error) { return m.readBatch(ms, false) }

func (m *mmsgConn) readBatch(ms []Message, wait bool) (int, error) {
	n := min(len(ms), MaxBatch)
	for i := 0; i < n; i++ {
		namelen := uint32(unix.SizeofSockaddrInet6) // room for the kernel to fill
		m.setHeader(&m.rhdrs[i].Hdr, &m.riovs[i], ms[i].Buf, &m.rnames[i], namelen)
	}
	m.rcount, m.rgot, m.rerr, m.rwait = n, 0, nil, wait
	if err := m.raw.Read(m.readFn); err != nil {
		return 0, err
	}
	if m.rerr != nil {
		return 0, m.rerr
	}
	for i := 0; i < m.rgot; i++ {
		ms[i].N = int(m.rhdrs[i].Len)
		if !m.connected {
			ms[i].Addr = addrPort(&m.rnames[i])
		}
	}
	return m.rgot, nil
}

func (m *mmsgConn) ReadLoop(ms []Message, handle func(n int) ReadAction) error {
	n := min(len(ms), MaxBatch)
	for i := 0; i < n; i++ {
		m.setHeader(&m.rhdrs[i].Hdr, &m.riovs[i], ms[i].Buf, &m.rnames[i], unix.SizeofSockaddrInet6)
	}
	m.lms, m.lhandle, m.lpolling, m.rerr = ms[:n], handle, false, nil
	err := m.raw.Read(m.loopFn)
	m.lms, m.lhandle = nil, nil
	if err != nil {
		return err
	}
	return m.rerr
}

// doLoop runs inside one RawConn.Read: the netpoller's readiness is reset once, on
// entry, and every datagram that arrives after a read sets it again, so after a read
// that left the socket empty (fewer than asked for) returning false parks until the
// next datagram without losing one, and with no empty recvmmsg first.
func (m *mmsgConn) doLoop(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.rhdrs[0])),
			uintptr(len(m.lms)), unix.MSG_DONTWAIT, 0, 0)
		got := 0
		switch e {
		case 0:
			got = int(r)
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if !m.lpolling {
				return false // a wake-up with nothing (a datagram read before it): park again
			}
		default:
			m.rerr = os.NewSyscallError("recvmmsg", e)
			return true
		}
		for i := 0; i < got; i++ {
			m.lms[i].N = int(m.rhdrs[i].Len)
			if !m.connected {
				m.lms[i].Addr = addrPort(&m.rnames[i])
				m.rhdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6 // the kernel wrote the name's length
			}
		}
		switch m.lhandle(got) {
		case Stop:
			return true
		case Poll:
			m.lpolling = true
			runtime.Gosched()
		default:
			m.lpolling = false
			if got < len(m.lms) {
				return false
			}
		}
	}
}

func (m *mmsgConn) doRead(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&m.rhdrs[0])),
			uintptr(m.rcount), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			m.rgot = int(r)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return !m.rwait // without wait: done, with nothing
		}
		m.rerr = os.NewSyscallError("recvmmsg", e)
		return true
	}
}

func (m *mmsgConn) WriteBatch(ms []Message) (int, error) {
	sent := 0
	for sent < len(ms) {
		n := min(len(ms)-sent, MaxBatch)
		for i := 0; i < n; i++ {
			msg := &ms[sent+i]
			var namelen uint32
			if !m.connected {
				namelen = putSockaddr(&m.wnames[i], msg.Addr, m.inet6)
			}
			m.setHeader(&m.whdrs[i].Hdr, &m.wiovs[i], msg.Buf, &m.wnames[i], namelen)
		}
		m.wcount, m.wsent, m.werr = n, 0, nil
		if err := m.raw.Write(m.writeFn); err != nil {
			return sent, err
		}
		sent += m.wsent
		if m.werr != nil {
			return sent, m.werr
		}
	}
	return sent, nil
}

// doWrite sends until the kernel took every message of the batch or refused one.
func (m *mmsgConn) doWrite(fd uintptr) bool {
	for m.wsent < m.wcount {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&m.whdrs[m.wsent])),
			uintptr(m.wcount-m.wsent), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			m.wsent += int(r)
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		m.werr = os.NewSyscallError("sendmmsg", e)
		return true
	}
	return true
}

// setHeader points h at buf through iov and, on an unconnected socket, at name.
func (m *mmsgConn) setHeader(h *unix.Msghdr, iov *unix.Iovec, buf []byte, name *unix.RawSockaddrInet6, namelen uint32) {
	iov.Base = unsafe.SliceData(buf)
	iov.SetLen(len(buf))
	h.Iov = iov
	h.SetIovlen(1)
	if m.connected {
		h.Name, h.Namelen = nil, 0
	} else {
		h.Name = (*byte)(unsafe.Pointer(name))
		h.Namelen = namelen
	}
}

// addrPort reads a sockaddr filled by the kernel without allocating.
func addrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port))
	}
	return netip.AddrPort{}
}

// putSockaddr writes ap for a socket of the given family and returns the name length.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort, inet6 bool) uint32 {
	port := htons(ap.Port())
	if !inet6 {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		sa4.Port = port
		sa4.Addr = ap.Addr().Unmap().As4()
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Port: port, Addr: ap.Addr().As16()}
	return unix.SizeofSockaddrInet6
}

// Ports in a sockaddr are in network byte order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

func htons(p uint16) uint16 {
	var out uint16
	b := (*[2]byte)(unsafe.Pointer(&out))
	b[0], b[1] = byte(p>>8), byte(p)
	return out
}
