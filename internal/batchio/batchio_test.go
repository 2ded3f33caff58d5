package batchio

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRoundTrip sends a batch from a connected socket to an unconnected one and echoes
// it back, checking payloads and the sender address the kernel reported.
func TestRoundTrip(t *testing.T) {
	srvSock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer srvSock.Close()
	cliSock, err := net.DialUDP("udp", nil, srvSock.LocalAddr().(*net.UDPAddr))
	require.NoError(t, err)
	defer cliSock.Close()
	srv, err := New(srvSock)
	require.NoError(t, err)
	cli, err := New(cliSock)
	require.NoError(t, err)

	const count = 10
	out := make([]Message, count)
	for i := range out {
		out[i].Buf = []byte(fmt.Sprintf("datagram %d", i))
	}
	n, err := cli.WriteBatch(out)
	require.NoError(t, err, "WriteBatch")
	require.Equal(t, count, n, "WriteBatch sent")

	in := make([]Message, count)
	for i := range in {
		in[i].Buf = make([]byte, 1500)
	}
	srvSock.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := 0
	for got < count {
		n, err := srv.ReadBatch(in[got:])
		require.NoError(t, err)
		for i := got; i < got+n; i++ {
			require.Equal(t, fmt.Sprintf("datagram %d", i), string(in[i].Buf[:in[i].N]), "message %d", i)
			require.Equal(t, cliSock.LocalAddr().String(), in[i].Addr.String(), "sender of message %d", i)
		}
		got += n
	}

	// Echo back to the reported addresses through the unconnected socket.
	for i := range in {
		in[i].Buf = in[i].Buf[:in[i].N]
	}
	n, err = srv.WriteBatch(in)
	require.NoError(t, err, "echo WriteBatch")
	require.Equal(t, count, n, "echo WriteBatch sent")
	back := make([]Message, count)
	for i := range back {
		back[i].Buf = make([]byte, 1500)
	}
	cliSock.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got = 0; got < count; {
		n, err := cli.ReadBatch(back[got:])
		require.NoError(t, err)
		got += n
	}
	for i := range back {
		assert.Equal(t, out[i].Buf, back[i].Buf[:back[i].N], "echo %d", i)
	}
}

// TestReadDeadline checks that a blocked ReadBatch returns at the socket's deadline.
func TestReadDeadline(t *testing.T) {
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer sock.Close()
	c, err := New(sock)
	require.NoError(t, err)
	sock.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	ms := []Message{{Buf: make([]byte, 100)}}
	_, err = c.ReadBatch(ms)
	assert.Error(t, err, "ReadBatch returned without data and without error")
}
