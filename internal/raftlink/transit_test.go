package raftlink

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// relay forwards one TCP connection, passing each record the dialer sends through hook
// (record 0 is the dialer's confirmation). hook returns the bytes to forward; stop makes
// the relay close its write side after them.
func relay(t *testing.T, upstream net.Addr, hook func(i int, rec []byte) (out []byte, stop bool)) net.Addr {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		conns = append(conns, c)
		return !closed
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		down, err := ln.Accept()
		if err != nil || !track(down) {
			return
		}
		up, err := net.Dial("tcp", upstream.String())
		if err != nil || !track(up) {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			io.Copy(down, up)
			down.Close() // pass the acceptor's close on
		}()
		var h [helloSize]byte
		if _, err := io.ReadFull(down, h[:]); err != nil {
			return
		}
		up.Write(h[:])
		for i := 0; ; i++ {
			var hdr [lenSize]byte
			if _, err := io.ReadFull(down, hdr[:]); err != nil {
				return
			}
			rec := make([]byte, lenSize+int(binary.BigEndian.Uint32(hdr[:])))
			copy(rec, hdr[:])
			if _, err := io.ReadFull(down, rec[lenSize:]); err != nil {
				return
			}
			out, stop := hook(i, rec)
			up.Write(out)
			if stop {
				up.(*net.TCPConn).CloseWrite()
				return
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr()
}

func TestTransit(t *testing.T) {
	cases := []struct {
		name string
		hook func(rec []byte) ([]byte, bool)
		want error
	}{
		{"flipped byte", func(rec []byte) ([]byte, bool) { rec[len(rec)/2] ^= 0x20; return rec, false }, ErrAuth},
		{"replayed", func(rec []byte) ([]byte, bool) { return append(rec, rec...), false }, ErrAuth},
		{"dropped", func(rec []byte) ([]byte, bool) { return nil, false }, ErrAuth},
		{"truncated", func(rec []byte) ([]byte, bool) { return rec[:len(rec)-3], true }, ErrTruncated},
		{"oversized", func(rec []byte) ([]byte, bool) {
			binary.BigEndian.PutUint32(rec, 1<<30)
			return rec, false
		}, ErrRecordSize},
		{"undersized", func(rec []byte) ([]byte, bool) { return []byte{0, 0, 0, 3, 1, 2, 3}, false }, ErrRecordSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			keys := keyring(t, secretA)
			srv := listen(t, "127.0.0.11", keys)
			got := make(chan []byte, 1)
			acc := serve(t, srv, func(c net.Conn) error {
				b := make([]byte, 5)
				if _, err := io.ReadFull(c, b); err != nil {
					return err
				}
				got <- b
				return drain(c)
			})
			// Record 1 ("first") passes, record 2 ("second") meets the fault.
			addr := relay(t, srv.Addr(), func(i int, rec []byte) ([]byte, bool) {
				if i == 1 {
					assert.NotContains(t, string(rec), "first", "a record travels in the clear")
				}
				if i == 2 {
					return tc.hook(rec)
				}
				return rec, false
			})
			c := dial(t, listen(t, "127.0.0.12", keys), addr)
			for _, s := range []string{"first", "second", "third"} {
				_, err := c.Write([]byte(s))
				require.NoError(t, err)
			}
			assert.Equal(t, "first", string(<-got))
			err := acc.nextErr(t)
			require.ErrorIs(t, err, tc.want)
			// The connection is closed: the dialer sees its end.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			require.Error(t, err)
			assert.False(t, isTimeout(err), "the accepting side did not close: %v", err)
		})
	}
}
