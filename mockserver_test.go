package netmutex

import (
	"net"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClientDropsBadReplies uses a scripted server for a corner the real one never
// reaches: corrupt reply datagrams. The client counts and drops them, and still takes
// the valid reply that follows, with its BUSY flag.
func TestClientDropsBadReplies(t *testing.T) {
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer sock.Close()
	const session = 7 << 32
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			sock.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err := sock.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			d, err := wire.Parse(buf[:n], false)
			if !assert.NoError(t, err, "client sent a bad datagram") { // not require: this is not the test's goroutine
				return
			}
			var f wire.Frame
			for d.Next(&f) {
				var reply []byte
				switch f.Op {
				case wire.OpConnect:
					reply = wire.FinishDatagram(wire.AppendConnected(wire.BeginDatagram(nil, wire.Header{Session: session}), f.ID,
						&wire.Connected{Session: session, MaxTTLMs: 60000, SessionTimeoutMs: 15000, RetransmitWindowMs: 60000, ServerID: 1}))
				case wire.OpLock:
					good := wire.FinishDatagram(wire.AppendOK(wire.BeginDatagram(nil, wire.Header{Session: session, Flags: wire.FlagBusy}), f.ID, 99))
					corrupt := append([]byte(nil), good...)
					corrupt[len(corrupt)-1] ^= 1
					sock.WriteToUDPAddrPort([]byte("not a netmutex datagram"), from)
					sock.WriteToUDPAddrPort(corrupt, from)
					sock.WriteToUDPAddrPort(good[:len(good)-3], from) // truncated
					reply = good
				case wire.OpDisconnect:
					reply = wire.FinishDatagram(wire.AppendEmpty(wire.BeginDatagram(nil, wire.Header{Session: session}), wire.OpDisconnected, f.ID))
				default:
					continue
				}
				sock.WriteToUDPAddrPort(reply, from)
			}
		}
	}()
	nm, err := Open(testRetries, testTimeout, []string{sock.LocalAddr().String()}, nil)
	require.NoError(t, err)
	var l Lock
	require.NoError(t, nm.Lock(testRetries, testTimeout, &l, "k", time.Second), "Lock")
	assert.Equal(t, uint64(99), l.FenceID(), "fence, want 99 from the valid reply")
	st := nm.Stats()
	assert.Equal(t, uint64(3), st.BadDatagrams, "bad datagrams in %+v", st)
	assert.Equal(t, uint64(1), st.Busy, "busy replies in %+v", st)
	require.NoError(t, nm.Close(testRetries, testTimeout))
	sock.Close()
	<-done
}
