package tests

// wireClient: a sealed client of hand-made datagrams (internal/wire, internal/seal), for
// what the netmutex client would not do on its own: stay on one server, whatever the
// cluster says.

import (
	"crypto/rand"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
	"github.com/stretchr/testify/require"
)

// wireClient is used by one goroutine at a time.
type wireClient struct {
	t       *testing.T
	ring    *seal.Keyring
	sealer  *seal.Sealer // one per client: the session is bound to its nonce prefix
	session uint64
	nextID  uint64
}

func newWireClient(t *testing.T, keyFile string) *wireClient {
	t.Helper()
	ring, err := seal.LoadKeyFile(keyFile)
	require.NoError(t, err)
	var b [8]byte
	rand.Read(b[:])
	// Request ids of a session only grow; start anywhere.
	return &wireClient{t: t, ring: ring, sealer: seal.NewSealer(), nextID: binary.BigEndian.Uint64(b[:]) >> 8}
}

// socket is a UDP socket aimed at addr, closed with the test.
func (c *wireClient) socket(addr string) *net.UDPConn {
	c.t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	require.NoError(c.t, err)
	s, err := net.DialUDP("udp", nil, ua)
	require.NoError(c.t, err)
	c.t.Cleanup(func() { s.Close() })
	return s
}

func (c *wireClient) id() uint64 { c.nextID++; return c.nextID }

// send seals the datagram made of the frames add appends and sends it on s. A failed
// write (ECONNREFUSED from a node that is down) is a lost datagram.
func (c *wireClient) send(s *net.UDPConn, add func(b []byte) []byte) {
	b := wire.BeginDatagram(nil, wire.Header{Session: c.session})
	b = wire.FinishDatagram(add(b))
	s.Write(c.sealer.Seal(nil, c.ring.Sealing(), b))
}

// recv returns the frames of the next reply on s that opens, or none within wait.
func (c *wireClient) recv(s *net.UDPConn, wait time.Duration) []wire.Frame {
	deadline := time.Now().Add(wait)
	buf := make([]byte, 65536)
	for {
		s.SetReadDeadline(deadline)
		n, err := s.Read(buf)
		if err != nil {
			if time.Now().Before(deadline) {
				continue // ECONNREFUSED from a node that is down: a lost datagram
			}
			return nil
		}
		plain, _, _, err := c.ring.Open(nil, buf[:n])
		if err != nil {
			continue
		}
		d, err := wire.Parse(plain, true)
		if err != nil {
			continue
		}
		var fs []wire.Frame
		var f wire.Frame
		for d.Next(&f) {
			f.Cookie = append([]byte(nil), f.Cookie...)
			f.Text = nil // aliases the datagram; unused
			fs = append(fs, f)
		}
		return fs
	}
}

// connect opens a session on the server at s, which must lead: CONNECT, COOKIE, CONNECT
// with the cookie, CONNECTED. It retries for a few seconds (a lost datagram, a leader
// still settling) and reports whether it got a session.
func (c *wireClient) connect(s *net.UDPConn) bool {
	connect := func(nonce uint64, cookie []byte) func(b []byte) []byte {
		return func(b []byte) []byte {
			b = wire.AppendConnect(b, nonce, "wire client", cookie)
			// Padded as the client pads it: a CONNECT travels in a datagram of at least
			// 512 bytes.
			if pad := wire.MinConnectDatagram - (len(b) + wire.TrailerSize); pad > 0 {
				b = wire.AppendPad(b, max(pad, wire.FrameHeaderSize))
			}
			return b
		}
	}
	c.session = 0
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		nonce := c.id()
		c.send(s, connect(nonce, nil))
		fs := c.recv(s, 200*time.Millisecond)
		if len(fs) != 1 || fs[0].Op != wire.OpCookie || fs[0].ID != nonce {
			continue
		}
		c.send(s, connect(nonce, fs[0].Cookie))
		fs = c.recv(s, 500*time.Millisecond)
		if len(fs) == 1 && fs[0].Op == wire.OpConnected && fs[0].ID == nonce {
			c.session = fs[0].Session
			return true
		}
	}
	return false
}

// call sends the request id that add appends once on s and returns the reply to it, if
// any within wait.
func (c *wireClient) call(s *net.UDPConn, id uint64, wait time.Duration, add func(b []byte) []byte) (wire.Frame, bool) {
	c.t.Helper()
	c.send(s, add)
	deadline := time.Now().Add(wait)
	for {
		fs := c.recv(s, time.Until(deadline))
		if fs == nil {
			return wire.Frame{}, false
		}
		for _, f := range fs {
			if f.ID == id {
				return f, true
			}
		}
	}
}
