package raftlink

import (
	"bytes"
	"io"
	"math"
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/chacha20poly1305"
)

// scriptConn is a net.Conn whose reads follow a script (a nil entry is a timeout) and
// whose writes are kept.
type scriptConn struct {
	net.Conn // nil: the methods the record layer does not call
	reads    [][]byte
	written  bytes.Buffer
}

func (s *scriptConn) Read(p []byte) (int, error) {
	if len(s.reads) == 0 {
		return 0, io.EOF
	}
	next := s.reads[0]
	if next == nil {
		s.reads = s.reads[1:]
		return 0, os.ErrDeadlineExceeded
	}
	n := copy(p, next)
	if s.reads[0] = next[n:]; len(s.reads[0]) == 0 {
		s.reads = s.reads[1:]
	}
	return n, nil
}

func (s *scriptConn) Write(p []byte) (int, error) { return s.written.Write(p) }
func (s *scriptConn) Close() error                { return nil }

// recordConn is a Conn past its handshake over tcp, with one fixed key both ways.
func recordConn(t *testing.T, tcp net.Conn) *Conn {
	aead, err := chacha20poly1305.New(make([]byte, chacha20poly1305.KeySize))
	require.NoError(t, err)
	c := newConn(tcp, nil, false)
	c.initRecords(aead, aead)
	c.hsDone.Store(true)
	return c
}

// A read that times out inside a record keeps what it read: the next read goes on.
func TestTimeoutInsideRecord(t *testing.T) {
	out := &scriptConn{}
	w := recordConn(t, out)
	_, err := w.Write([]byte("hello, raft"))
	require.NoError(t, err)
	wire := out.written.Bytes()

	r := recordConn(t, &scriptConn{reads: [][]byte{wire[:2], nil, wire[2:9], nil, wire[9:]}})
	buf := make([]byte, 64)
	for range 2 {
		_, err = r.Read(buf)
		require.True(t, isTimeout(err), "%v", err)
	}
	n, err := r.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "hello, raft", string(buf[:n]))
	_, err = r.Read(buf)
	assert.Equal(t, io.EOF, err, "a close between records reads as EOF")
}

func TestCounterNeverWraps(t *testing.T) {
	out := &scriptConn{}
	w := recordConn(t, out)
	w.wseq = math.MaxUint64
	_, err := w.Write([]byte("x"))
	require.ErrorIs(t, err, ErrExhausted)
	assert.Zero(t, out.written.Len(), "nothing sent under a worn-out counter")

	src := &scriptConn{}
	_, err = recordConn(t, src).Write([]byte("x"))
	require.NoError(t, err)
	r := recordConn(t, &scriptConn{reads: [][]byte{src.written.Bytes()}})
	r.rseq = math.MaxUint64
	_, err = r.Read(make([]byte, 1))
	require.ErrorIs(t, err, ErrExhausted)
}
