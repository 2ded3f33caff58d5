package faultproxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// echoUpstream echoes every TCP connection until the test ends, counting what it gets.
type echoUpstream struct {
	addr     string
	accepted atomic.Int64
	received atomic.Int64
}

func echoServer(t *testing.T) *echoUpstream {
	t.Helper()
	e := &echoUpstream{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					e.received.Add(int64(n))
					if err != nil {
						break
					}
					if _, err := c.Write(buf[:n]); err != nil {
						break
					}
				}
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	e.addr = ln.Addr().String()
	return e
}

func newTCPProxy(t *testing.T) (*TCPProxy, *echoUpstream) {
	t.Helper()
	up := echoServer(t)
	p, err := NewTCP("127.0.0.1:0", up.addr)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p, up
}

// dialFrom connects to p from the loopback address src.
func dialFrom(t *testing.T, p *TCPProxy, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", p.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// echoes reports whether msg comes back through c within wait.
func echoes(t *testing.T, c net.Conn, msg string, wait time.Duration) bool {
	t.Helper()
	_, err := c.Write([]byte(msg))
	require.NoError(t, err)
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return false
	}
	require.Equal(t, msg, string(b))
	return true
}

// closed reports whether c's peer has closed it (EOF or reset) within five seconds.
func closed(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestTCPForwards(t *testing.T) {
	p, _ := newTCPProxy(t)
	c := dialFrom(t, p, "127.0.0.1")
	assert.True(t, echoes(t, c, "hello", time.Second))
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(big)
		errc <- err
	}()
	got := make([]byte, len(big))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	assert.Equal(t, big, got)
}

func TestTCPBlackhole(t *testing.T) {
	p, up := newTCPProxy(t)
	old := dialFrom(t, p, "127.0.0.1")
	require.True(t, echoes(t, old, "before", time.Second))

	p.Blackhole(true)
	assert.False(t, echoes(t, old, "during", 200*time.Millisecond), "an existing connection went through")
	during := dialFrom(t, p, "127.0.0.1")
	assert.False(t, echoes(t, during, "new", 200*time.Millisecond), "a new connection went through")

	p.Blackhole(false)
	assert.True(t, closed(t, old), "a stalled connection stayed open after the heal")
	assert.True(t, closed(t, during), "a connection made during the blackhole stayed open")
	// Nothing sent during the blackhole reached the upstream, not even at the heal, and
	// the connection made during it was never connected upstream.
	assert.Equal(t, int64(len("before")), up.received.Load())
	assert.Equal(t, int64(1), up.accepted.Load())
	fresh := dialFrom(t, p, "127.0.0.1")
	assert.True(t, echoes(t, fresh, "after", time.Second))
}

func TestTCPBlackholeFrom(t *testing.T) {
	p, _ := newTCPProxy(t)
	cut := dialFrom(t, p, "127.0.0.2")
	kept := dialFrom(t, p, "127.0.0.3")
	require.True(t, echoes(t, cut, "a", time.Second))

	p.BlackholeFrom(netip.MustParseAddr("127.0.0.2"), true)
	assert.False(t, echoes(t, cut, "b", 200*time.Millisecond), "the blackholed IP went through")
	assert.True(t, echoes(t, kept, "c", time.Second), "another IP was cut")
	late := dialFrom(t, p, "127.0.0.2")
	assert.False(t, echoes(t, late, "d", 200*time.Millisecond), "a new connection of the IP went through")

	p.BlackholeFrom(netip.MustParseAddr("127.0.0.2"), false)
	assert.True(t, closed(t, cut))
	assert.True(t, closed(t, late))
	assert.True(t, echoes(t, kept, "e", time.Second), "healing closed another IP's connection")
	assert.True(t, echoes(t, dialFrom(t, p, "127.0.0.2"), "f", time.Second))
}

// A connection that matched both blackholes stays stalled until the last one lifts.
func TestTCPBlackholeBoth(t *testing.T) {
	p, _ := newTCPProxy(t)
	c := dialFrom(t, p, "127.0.0.2")
	require.True(t, echoes(t, c, "a", time.Second))
	p.Blackhole(true)
	p.BlackholeFrom(netip.MustParseAddr("127.0.0.2"), true)
	p.Blackhole(false)
	assert.False(t, echoes(t, c, "b", 200*time.Millisecond))
	p.BlackholeFrom(netip.MustParseAddr("127.0.0.2"), false)
	assert.True(t, closed(t, c))
}

func TestTCPClose(t *testing.T) {
	p, err := NewTCP("127.0.0.1:0", echoServer(t).addr)
	require.NoError(t, err)
	a := dialFrom(t, p, "127.0.0.1")
	require.True(t, echoes(t, a, "x", time.Second))
	p.BlackholeFrom(netip.MustParseAddr("127.0.0.2"), true)
	dialFrom(t, p, "127.0.0.2") // stalled, never connected upstream
	require.NoError(t, p.Close())
	assert.True(t, closed(t, a))
	assert.ErrorIs(t, p.Close(), errClosed)
}
