// Raft's streams: raftlink's authenticated layer, with every connection it made or
// accepted closed on Close. hashicorp/raft's NetworkTransport closes its listener and
// pooled streams, but not the connections its handlers serve: those would outlive the
// server until the peer hung up.

package server

import (
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/netmutex/netmutex/internal/raftlink"
)

// trackedLayer is a raft.StreamLayer that closes its connections when it closes.
type trackedLayer struct {
	*raftlink.Layer
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

var _ raft.StreamLayer = (*trackedLayer)(nil)

func (l *trackedLayer) track(c net.Conn, err error) (net.Conn, error) {
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	if l.conns == nil {
		l.conns = make(map[net.Conn]struct{})
	}
	l.conns[c] = struct{}{}
	return &trackedConn{Conn: c, l: l}, nil
}

func (l *trackedLayer) Accept() (net.Conn, error) { return l.track(l.Layer.Accept()) }

func (l *trackedLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return l.track(l.Layer.Dial(address, timeout))
}

func (l *trackedLayer) Close() error {
	err := l.Layer.Close()
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	clear(l.conns)
	l.mu.Unlock()
	return err
}

// trackedConn forgets itself when closed.
type trackedConn struct {
	net.Conn
	l    *trackedLayer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c.Conn)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
