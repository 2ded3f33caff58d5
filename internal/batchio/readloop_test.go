package batchio

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// loopPair is an unconnected receiving socket behind batchio and a connected sender.
func loopPair(t *testing.T) (rcv *net.UDPConn, rc Conn, snd *net.UDPConn) {
	t.Helper()
	rcv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { rcv.Close() })
	SetBuffers(rcv)
	snd, err = net.DialUDP("udp", nil, rcv.LocalAddr().(*net.UDPAddr))
	require.NoError(t, err)
	t.Cleanup(func() { snd.Close() })
	rc, err = New(rcv)
	require.NoError(t, err)
	return rcv, rc, snd
}

func buffers(n int) []Message {
	ms := make([]Message, n)
	for i := range ms {
		ms[i].Buf = make([]byte, 1500)
	}
	return ms
}

// TestReadLoopLosesNothing: datagrams sent one at a time (each after the last was read,
// so the loop parks between them), in bursts larger than a batch, and while it polls
// are all handed over, in order, with their sender; Stop ends ReadLoop with nil. A lost
// wake-up would hang until the deadline, which fails the test.
func TestReadLoopLosesNothing(t *testing.T) {
	rcv, rc, snd := loopPair(t)
	rcv.SetReadDeadline(time.Now().Add(20 * time.Second))
	ms := buffers(8)
	// Bursts of 100: many batches of 8, and within a default socket buffer (208 KB) where
	// a system caps SetBuffers' ask, so that a drop cannot pass for a lost wake-up.
	const lone, burst = 200, 100
	total := lone + 2*burst
	read := make(chan struct{}, 1)
	got := 0
	sent := make(chan error, 1)
	go func() {
		send := func(i int) error {
			_, err := snd.Write([]byte(fmt.Sprint(i)))
			return err
		}
		for i := 0; i < lone; i++ {
			if err := send(i); err != nil {
				sent <- err
				return
			}
			<-read // one at a time: the loop has read it and parks again
		}
		for i := lone; i < total; i++ { // bursts: full batches, then partial ones
			if err := send(i); err != nil {
				sent <- err
				return
			}
			if i == lone+burst {
				time.Sleep(time.Millisecond)
			}
		}
		sent <- nil
	}()
	polls, empty := 0, 0
	err := rc.ReadLoop(ms, func(n int) ReadAction {
		if n == 0 {
			empty++
		}
		for i := 0; i < n; i++ {
			require.Equal(t, fmt.Sprint(got), string(ms[i].Buf[:ms[i].N]), "datagram %d", got)
			require.Equal(t, snd.LocalAddr().String(), ms[i].Addr.String())
			got++
			if got <= lone {
				read <- struct{}{}
			}
		}
		switch {
		case got == total:
			return Stop
		case got > lone && polls < 50: // poll through part of the bursts
			polls++
			return Poll
		}
		return Wait
	})
	require.NoError(t, err, "ReadLoop after %d of %d datagrams", got, total)
	require.NoError(t, <-sent)
	assert.Equal(t, total, got)
	t.Logf("%d polls, %d of them found nothing", polls, empty)
}

// TestReadLoopPollReportsEmpty: after Poll, a try that finds nothing is handed to the
// handler as 0 (it decides whether to park), not waited on.
func TestReadLoopPollReportsEmpty(t *testing.T) {
	rcv, rc, snd := loopPair(t)
	rcv.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := snd.Write([]byte("one"))
	require.NoError(t, err)
	var calls []int
	err = rc.ReadLoop(buffers(4), func(n int) ReadAction {
		calls = append(calls, n)
		if len(calls) < 3 {
			return Poll
		}
		return Stop
	})
	require.NoError(t, err)
	if CanPoll {
		assert.Equal(t, []int{1, 0, 0}, calls)
	} else {
		assert.Equal(t, 1, calls[0])
	}
}

// TestReadLoopEnds: a read deadline and Close end a ReadLoop parked in the netpoller,
// with the errors a ReadBatch would return.
func TestReadLoopEnds(t *testing.T) {
	rcv, rc, _ := loopPair(t)
	rcv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	err := rc.ReadLoop(buffers(4), func(int) ReadAction { t.Error("no datagram was sent"); return Stop })
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	rcv.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { done <- rc.ReadLoop(buffers(4), func(int) ReadAction { return Wait }) }()
	time.Sleep(20 * time.Millisecond)
	rcv.Close()
	select {
	case err := <-done:
		require.True(t, errors.Is(err, net.ErrClosed), "%v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end ReadLoop")
	}
}

// TestReadLoopAllocs: a batch read and handed over allocates nothing.
func TestReadLoopAllocs(t *testing.T) {
	rcv, rc, snd := loopPair(t)
	rcv.SetReadDeadline(time.Now().Add(10 * time.Second))
	ms := buffers(4)
	stop := func(int) ReadAction { return Stop }
	payload := []byte("x")
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := snd.Write(payload); err != nil {
			t.Fatal(err)
		}
		if err := rc.ReadLoop(ms, stop); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// TestPoller: a lone datagram parks at once; a busy read polls RecvSpins empty tries,
// starting again after each read with datagrams; a spin polls until its end after the
// last datagram (where the socket can be polled), and spinOK false ends it.
func TestPoller(t *testing.T) {
	var p Poller
	assert.Equal(t, Wait, p.Next(1, false, 0, 0, true), "a lone datagram")

	assert.Equal(t, Poll, p.Next(3, true, 0, 0, true), "a busy read")
	for i := 1; i < RecvSpins; i++ {
		assert.Equal(t, Poll, p.Next(0, false, 0, 0, true), "empty try %d", i)
	}
	assert.Equal(t, Poll, p.Next(1, false, 0, 0, true), "a lone datagram while polling: the poll goes on")
	for i := 1; i < RecvSpins; i++ {
		assert.Equal(t, Poll, p.Next(0, false, 0, 0, true), "empty try %d", i)
	}
	assert.Equal(t, Wait, p.Next(0, false, 0, 0, true), "RecvSpins empty tries in a row")
	assert.Equal(t, Poller{}, p, "parked: the state starts again")

	spin := time.Duration(100)
	want := Wait
	if CanPoll {
		want = Poll
	}
	assert.Equal(t, want, p.Next(1, false, 1000, spin, true), "a spin after a lone datagram")
	assert.Equal(t, want, p.Next(0, false, 1099, spin, true), "within the spin")
	assert.Equal(t, want, p.Next(1, false, 1099, spin, true), "a datagram extends it")
	assert.Equal(t, want, p.Next(0, false, 1198, spin, true))
	assert.Equal(t, Wait, p.Next(0, false, 1199, spin, false), "spinOK false ends it")
	assert.Equal(t, want, p.Next(1, false, 2000, spin, true))
	assert.Equal(t, Wait, p.Next(0, false, 2100, spin, true), "the spin has ended")
}
