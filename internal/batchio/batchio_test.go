package batchio

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"
)

// TestRoundTrip sends a batch from a connected socket to an unconnected one and echoes
// it back, checking payloads and the sender address the kernel reported.
func TestRoundTrip(t *testing.T) {
	srvSock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srvSock.Close()
	cliSock, err := net.DialUDP("udp", nil, srvSock.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cliSock.Close()
	srv, err := New(srvSock)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := New(cliSock)
	if err != nil {
		t.Fatal(err)
	}

	const count = 10
	out := make([]Message, count)
	for i := range out {
		out[i].Buf = []byte(fmt.Sprintf("datagram %d", i))
	}
	if n, err := cli.WriteBatch(out); err != nil || n != count {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}

	in := make([]Message, count)
	for i := range in {
		in[i].Buf = make([]byte, 1500)
	}
	srvSock.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := 0
	for got < count {
		n, err := srv.ReadBatch(in[got:])
		if err != nil {
			t.Fatal(err)
		}
		for i := got; i < got+n; i++ {
			if want := fmt.Sprintf("datagram %d", i); string(in[i].Buf[:in[i].N]) != want {
				t.Fatalf("message %d = %q, want %q", i, in[i].Buf[:in[i].N], want)
			}
			if in[i].Addr.String() != cliSock.LocalAddr().String() {
				t.Fatalf("sender %v, want %v", in[i].Addr, cliSock.LocalAddr())
			}
		}
		got += n
	}

	// Echo back to the reported addresses through the unconnected socket.
	for i := range in {
		in[i].Buf = in[i].Buf[:in[i].N]
	}
	if n, err := srv.WriteBatch(in); err != nil || n != count {
		t.Fatalf("echo WriteBatch = %d, %v", n, err)
	}
	back := make([]Message, count)
	for i := range back {
		back[i].Buf = make([]byte, 1500)
	}
	cliSock.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got = 0; got < count; {
		n, err := cli.ReadBatch(back[got:])
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	for i := range back {
		if !bytes.Equal(back[i].Buf[:back[i].N], out[i].Buf) {
			t.Fatalf("echo %d = %q", i, back[i].Buf[:back[i].N])
		}
	}
}

// TestReadDeadline checks that a blocked ReadBatch returns at the socket's deadline.
func TestReadDeadline(t *testing.T) {
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	c, err := New(sock)
	if err != nil {
		t.Fatal(err)
	}
	sock.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	ms := []Message{{Buf: make([]byte, 100)}}
	if _, err := c.ReadBatch(ms); err == nil {
		t.Fatal("ReadBatch returned without data and without error")
	}
}
