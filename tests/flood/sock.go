// The attacking side: raw UDP sockets that hand-craft datagrams, the COOKIE+CONNECT
// handshake, pacing, and counting the replies by opcode and error code.

package main

import (
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// sock is one flood socket: plain, or sealing under its own Sealer (a session is bound
// to the nonce prefix of its CONNECT).
type sock struct {
	e      *env
	c      *net.UDPConn
	key    *seal.Key
	sealer *seal.Sealer
	buf    []byte
	rbuf   []byte
	opened []byte
}

func newSock(e *env, key *seal.Key) (*sock, error) {
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, e.addr)
	if err != nil {
		return nil, err
	}
	c.SetWriteBuffer(4 << 20)
	c.SetReadBuffer(4 << 20)
	s := &sock{e: e, c: c, key: key, buf: make([]byte, 0, 2048), rbuf: make([]byte, 65536), opened: make([]byte, 0, 2048)}
	if key != nil {
		s.sealer = seal.NewSealer()
	}
	return s, nil
}

// sessionSock is a socket sealing under the server's key when it has one.
func sessionSock(e *env) (*sock, error) {
	var key *seal.Key
	if e.keys != nil {
		key = e.keys.Sealing()
	}
	return newSock(e, key)
}

// send sends the plain datagram b, sealed if the socket has a key. Errors (a full
// buffer, ECONNREFUSED after an ICMP) are ignored: a flood does not care.
func (s *sock) send(b []byte) {
	if s.key != nil {
		s.buf = s.sealer.Seal(s.buf[:0], s.key, b)
		b = s.buf
	}
	if _, err := s.c.Write(b); err == nil {
		s.e.c.sentDg.Add(1)
		s.e.c.sentB.Add(int64(len(b)))
	}
}

// sendRaw sends b as it is.
func (s *sock) sendRaw(b []byte) {
	if _, err := s.c.Write(b); err == nil {
		s.e.c.sentDg.Add(1)
		s.e.c.sentB.Add(int64(len(b)))
	}
}

// recv reads one reply, opened if the server has keys; ok is false on a timeout or a
// closed socket. Replies that do not parse are counted and skipped.
func (s *sock) recv(deadline time.Time) (wire.Datagram, bool) {
	for {
		s.c.SetReadDeadline(deadline)
		n, err := s.c.Read(s.rbuf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed) {
				return wire.Datagram{}, false
			}
			continue // ECONNREFUSED and the like
		}
		s.e.c.recvDg.Add(1)
		s.e.c.recvB.Add(int64(n))
		b := s.rbuf[:n]
		if s.e.keys != nil && seal.IsSealed(b) {
			p, _, _, err := s.e.keys.Open(s.opened[:0], b)
			if err != nil {
				continue
			}
			b = p
		}
		d, err := wire.Parse(b, true)
		if err != nil {
			continue
		}
		return d, true
	}
}

// readLoop hands every reply frame to fn until the socket is closed.
func (s *sock) readLoop(fn func(f *wire.Frame)) {
	var f wire.Frame
	for {
		d, ok := s.recv(time.Now().Add(time.Hour))
		if !ok {
			return
		}
		for d.Next(&f) {
			fn(&f)
		}
	}
}

func connectDatagram(nonce uint64, info string, cookie []byte) []byte {
	b := wire.BeginDatagram(make([]byte, 0, wire.MinConnectDatagram), wire.Header{})
	b = wire.AppendConnect(b, nonce, info, cookie)
	if pad := wire.MinConnectDatagram - (len(b) + wire.TrailerSize); pad > 0 {
		b = wire.AppendPad(b, max(pad, wire.FrameHeaderSize))
	}
	return wire.FinishDatagram(b)
}

// handshake gets a session for s: CONNECT, COOKIE, CONNECT with the cookie, CONNECTED.
func (s *sock) handshake(info string) (uint64, error) {
	nonce := mrand.Uint64() | 1
	var cookie []byte
	var f wire.Frame
	for attempt := 0; attempt < 20; attempt++ {
		s.send(connectDatagram(nonce, info, cookie))
		deadline := time.Now().Add(200 * time.Millisecond)
		for {
			d, ok := s.recv(deadline)
			if !ok {
				break
			}
			for d.Next(&f) {
				if f.ID != nonce {
					continue
				}
				switch f.Op {
				case wire.OpCookie:
					cookie = append([]byte(nil), f.Cookie...)
				case wire.OpConnected:
					return f.Session, nil
				case wire.OpError:
					return 0, fmt.Errorf("CONNECT refused: code %d", f.Code)
				}
			}
			if cookie != nil {
				break
			}
		}
	}
	return 0, errors.New("no CONNECTED")
}

// pace calls send rate times a second until stop is closed (rate <= 0: as fast as it
// can), and returns how many times it called it.
func pace(stop <-chan struct{}, rate float64, send func()) int {
	start := time.Now()
	n := 0
	for {
		if rate <= 0 {
			for i := 0; i < 64; i++ {
				send()
				n++
			}
			select {
			case <-stop:
				return n
			default:
			}
			continue
		}
		due := int(rate * time.Since(start).Seconds())
		for ; n < due; n++ {
			send()
		}
		select {
		case <-stop:
			return n
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// codeCounts counts ERROR codes and other reply ops seen.
type codeCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *codeCounts) add(f *wire.Frame) {
	name := opName(f.Op)
	if f.Op == wire.OpError {
		name = codeName(f.Code)
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[name]++
	c.mu.Unlock()
}

func (c *codeCounts) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ks []string
	for k := range c.m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c.m[k]))
	}
	if len(parts) == 0 {
		return "no replies"
	}
	return strings.Join(parts, " ")
}

func opName(op wire.Op) string {
	switch op {
	case wire.OpConnected:
		return "CONNECTED"
	case wire.OpPong:
		return "PONG"
	case wire.OpOK:
		return "OK"
	case wire.OpLocked:
		return "LOCKED"
	case wire.OpIsolated:
		return "ISOLATED"
	case wire.OpDisconnected:
		return "DISCONNECTED"
	case wire.OpRedirect:
		return "REDIRECT"
	case wire.OpCookie:
		return "COOKIE"
	}
	return fmt.Sprintf("op%#x", uint8(op))
}

func codeName(c wire.Code) string {
	switch c {
	case wire.CodeLockDelay:
		return "LOCK_DELAY"
	case wire.CodeStale:
		return "STALE"
	case wire.CodeAuth:
		return "AUTH"
	case wire.CodeTooManySessions:
		return "TOO_MANY_SESSIONS"
	case wire.CodeTooManyLocks:
		return "TOO_MANY_LOCKS"
	case wire.CodeRateLimited:
		return "RATE_LIMITED"
	case wire.CodeForbidden:
		return "FORBIDDEN"
	case wire.CodeServerFull:
		return "SERVER_FULL"
	}
	return fmt.Sprintf("ERROR%d", c)
}
