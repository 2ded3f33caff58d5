//go:build !linux || netmutex_portable

// The portable path: one datagram per system call.

package batchio

import "net"

// MaxBatch is 1: without recvmmsg, each datagram costs a call of its own.
const MaxBatch = 1

// loopConn is the portable path: one datagram per system call.
type loopConn struct {
	c         *net.UDPConn
	connected bool
}

var _ Conn = (*loopConn)(nil)

func newConn(c *net.UDPConn) (Conn, error) {
	return &loopConn{c: c, connected: c.RemoteAddr() != nil}, nil
}

func (l *loopConn) ReadBatch(ms []Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	n, addr, err := l.c.ReadFromUDPAddrPort(ms[0].Buf)
	if err != nil {
		return 0, err
	}
	ms[0].N, ms[0].Addr = n, addr
	return 1, nil
}

// CanPoll is false: TryReadBatch reads nothing on this path, so polling the socket
// instead of parking (SpinWait) would only burn the core.
const CanPoll = false

// TryReadBatch has no cheap non-blocking form here: it reports nothing, and the caller
// falls back to ReadBatch.
func (l *loopConn) TryReadBatch(ms []Message) (int, error) { return 0, nil }

func (l *loopConn) ReadLoop(ms []Message, handle func(n int) ReadAction) error {
	return LoopOver(l, ms, handle)
}

func (l *loopConn) WriteBatch(ms []Message) (int, error) {
	for i := range ms {
		var err error
		if l.connected {
			_, err = l.c.Write(ms[i].Buf)
		} else {
			_, err = l.c.WriteToUDPAddrPort(ms[i].Buf, ms[i].Addr)
		}
		if err != nil {
			return i, err
		}
	}
	return len(ms), nil
}
