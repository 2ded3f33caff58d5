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

// TestConnectNotLeaderIsNoRefusal: a CONNECT answered ERROR NOT_LEADER (a node that
// knows no leader yet, during an election) is tried again; Open succeeds once the
// server answers, and if it never does, Open reports that no server answered, not a
// refusal.
func TestConnectNotLeaderIsNoRefusal(t *testing.T) {
	for _, notLeaders := range []int{2, 1 << 30} {
		sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		const session = 9 << 32
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 2048)
			connects := 0
			for {
				n, from, err := sock.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				d, err := wire.Parse(buf[:n], false)
				if err != nil {
					continue
				}
				var f wire.Frame
				for d.Next(&f) {
					var reply []byte
					switch {
					case f.Op == wire.OpConnect && connects < notLeaders:
						connects++
						reply = wire.FinishDatagram(wire.AppendError(wire.BeginDatagram(nil, wire.Header{}), f.ID, wire.CodeNotLeader, ""))
					case f.Op == wire.OpConnect:
						reply = wire.FinishDatagram(wire.AppendConnected(wire.BeginDatagram(nil, wire.Header{Session: session}), f.ID,
							&wire.Connected{Session: session, MaxTTLMs: 60000, SessionTimeoutMs: 15000, RetransmitWindowMs: 60000, ServerID: 1}))
					default:
						continue
					}
					sock.WriteToUDPAddrPort(reply, from)
				}
			}
		}()
		nm, err := Open(3, 100*time.Millisecond, []string{sock.LocalAddr().String()}, nil)
		if notLeaders == 2 {
			require.NoError(t, err, "Open after two NOT_LEADER")
			require.Equal(t, uint64(session), nm.conn.Load().session.Load())
			nm.Close(1, 10*time.Millisecond)
		} else {
			require.ErrorIs(t, err, ErrNoServers, "Open while nobody leads")
			for _, refusal := range []error{ErrAuth, ErrRateLimited, ErrTooManySessions, ErrRefused, ErrTooMuchRetries} {
				require.NotErrorIs(t, err, refusal)
			}
		}
		sock.Close()
		<-done
	}
}
