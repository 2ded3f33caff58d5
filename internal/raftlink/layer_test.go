package raftlink

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/netmutex/netmutex/internal/seal"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	secretA = "1 0101010101010101010101010101010101010101010101010101010101010101"
	secretB = "1 0202020202020202020202020202020202020202020202020202020202020202"
	secret7 = "7 0707070707070707070707070707070707070707070707070707070707070707"
)

func keyring(t *testing.T, lines ...string) *seal.Keyring {
	t.Helper()
	r, err := seal.ParseKeys(strings.NewReader(strings.Join(lines, "\n")))
	require.NoError(t, err)
	return r
}

func listen(t *testing.T, ip string, keys *seal.Keyring) *Layer {
	t.Helper()
	l, err := Listen(ip+":0", "", keys)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// acceptor serves every connection a layer accepts with handle, and reports the error
// that ended each one.
type acceptor struct {
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
	errs  chan error
}

func serve(t *testing.T, l *Layer, handle func(net.Conn) error) *acceptor {
	a := &acceptor{errs: make(chan error, 16)}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			a.mu.Lock()
			a.conns = append(a.conns, c)
			a.mu.Unlock()
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				err := handle(c)
				c.Close()
				a.errs <- err
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		a.mu.Lock()
		for _, c := range a.conns {
			c.Close()
		}
		a.mu.Unlock()
		a.wg.Wait()
	})
	return a
}

func (a *acceptor) nextErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-a.errs:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("no connection ended")
		return nil
	}
}

func echo(c net.Conn) error {
	_, err := io.Copy(c, c)
	return err
}

// drain reads until the connection fails and returns that error.
func drain(c net.Conn) error {
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	return err
}

func dial(t *testing.T, l *Layer, to net.Addr) net.Conn {
	t.Helper()
	c, err := l.Dial(raft.ServerAddress(to.String()), 2*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends n random bytes through an echo and checks they come back.
func roundTrip(t *testing.T, c net.Conn, n int) {
	t.Helper()
	out := make([]byte, n)
	rand.Read(out)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(out)
		errc <- err
	}()
	in := make([]byte, n)
	_, err := io.ReadFull(c, in)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	require.True(t, bytes.Equal(out, in), "echoed bytes differ")
}

func TestExchange(t *testing.T) {
	for _, keyed := range []bool{true, false} {
		name := map[bool]string{true: "keyed", false: "plain"}[keyed]
		t.Run(name, func(t *testing.T) {
			var keys *seal.Keyring
			if keyed {
				keys = keyring(t, secretA)
			}
			a, b := listen(t, "127.0.0.11", keys), listen(t, "127.0.0.12", keys)
			from := make(chan net.Addr, 1)
			serve(t, b, func(c net.Conn) error { from <- c.RemoteAddr(); return echo(c) })
			c := dial(t, a, b.Addr())
			// Many records each way, with writes that do not fall on record boundaries.
			roundTrip(t, c, 3*maxPlain+12345)
			roundTrip(t, c, 1)
			roundTrip(t, c, 1<<20)
			assert.Equal(t, "127.0.0.11", (<-from).(*net.TCPAddr).IP.String(), "Dial binds the bind IP")
			if keyed {
				assert.IsType(t, &Conn{}, c)
			}
		})
	}
}

func TestAdvertise(t *testing.T) {
	l, err := Listen("127.0.0.11:0", "127.0.0.21:7000", nil)
	require.NoError(t, err)
	defer l.Close()
	assert.Equal(t, "127.0.0.21:7000", l.Addr().String())
}

func TestRefused(t *testing.T) {
	good := keyring(t, secretA)
	cases := []struct {
		name      string
		dialer    *seal.Keyring // nil: a raw TCP peer sending junk
		dialErr   error
		acceptErr error
	}{
		{"wrong secret", keyring(t, secretB), ErrAuth, ErrAuth},
		{"unknown key id", keyring(t, secret7), ErrUnknownKey, ErrUnknownKey},
		{"not raftlink", nil, nil, ErrHandshake},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := listen(t, "127.0.0.11", good)
			acc := serve(t, srv, echo)
			if tc.dialer != nil {
				bad := listen(t, "127.0.0.12", tc.dialer)
				_, err := bad.Dial(raft.ServerAddress(srv.Addr().String()), 2*time.Second)
				require.ErrorIs(t, err, tc.dialErr)
			} else {
				raw, err := net.Dial("tcp", srv.Addr().String())
				require.NoError(t, err)
				_, err = raw.Write([]byte(strings.Repeat("junk", 16)))
				require.NoError(t, err)
				defer raw.Close()
			}
			require.ErrorIs(t, acc.nextErr(t), tc.acceptErr)
			// The same Accept serves the next good peer.
			ok := listen(t, "127.0.0.13", good)
			roundTrip(t, dial(t, ok, srv.Addr()), 1000)
		})
	}
}

// A keyed dialer facing a plain echo reads its own hello and confirmation back: the
// confirmation is sealed under the other direction's key, so it does not open.
func TestReflected(t *testing.T) {
	srv := listen(t, "127.0.0.11", nil)
	serve(t, srv, echo)
	cli := listen(t, "127.0.0.12", keyring(t, secretA))
	_, err := cli.Dial(raft.ServerAddress(srv.Addr().String()), 2*time.Second)
	require.ErrorIs(t, err, ErrAuth)
}

// During a rotation one node lists the new key first and the other does not know it yet:
// they agree on the old key in both directions.
func TestRotation(t *testing.T) {
	rotated := keyring(t, "2 "+strings.Repeat("22", 32), secretA)
	a, b := listen(t, "127.0.0.11", rotated), listen(t, "127.0.0.12", keyring(t, secretA))
	serve(t, a, echo)
	serve(t, b, echo)
	roundTrip(t, dial(t, a, b.Addr()), 100)
	roundTrip(t, dial(t, b, a.Addr()), 100)
}

// A peer that connects and says nothing times out on its own connection; Accept goes on.
func TestSilentPeer(t *testing.T) {
	defer func(d time.Duration) { HandshakeTimeout = d }(HandshakeTimeout)
	HandshakeTimeout = 300 * time.Millisecond
	keys := keyring(t, secretA)
	srv := listen(t, "127.0.0.11", keys)
	acc := serve(t, srv, echo)
	silent, err := net.Dial("tcp", srv.Addr().String())
	require.NoError(t, err)
	defer silent.Close()
	start := time.Now()
	roundTrip(t, dial(t, listen(t, "127.0.0.12", keys), srv.Addr()), 100)
	assert.Less(t, time.Since(start), HandshakeTimeout, "a silent peer held up Accept")
	err = acc.nextErr(t)
	require.ErrorIs(t, err, ErrHandshake)
	assert.True(t, isTimeout(err), "%v", err)
}

func TestClosedConn(t *testing.T) {
	keys := keyring(t, secretA)
	srv := listen(t, "127.0.0.11", keys)
	serve(t, srv, echo)
	c := dial(t, listen(t, "127.0.0.12", keys), srv.Addr())
	require.NoError(t, c.Close())
	_, err := c.Write([]byte("x"))
	require.True(t, errors.Is(err, net.ErrClosed), "%v", err)
	_, err = c.Read(make([]byte, 1))
	require.True(t, errors.Is(err, net.ErrClosed), "%v", err)
}
