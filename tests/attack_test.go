package tests

// The attacks of issue 9 against netmutexd as a process, each from the outside: a client
// or a raw UDP socket sending hand-crafted datagrams (docs/PROTOCOL.md). Each failed on
// the server before the security work and passes now.

import (
	"bytes"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rawSocket is an attacker's UDP socket aimed at addr.
func rawSocket(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	require.NoError(t, err)
	c, err := net.DialUDP("udp", nil, ua)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// drain reads what comes back on c for d and returns the datagrams.
func drain(c *net.UDPConn, d time.Duration) [][]byte {
	var got [][]byte
	buf := make([]byte, 65536)
	deadline := time.Now().Add(d)
	for {
		c.SetReadDeadline(deadline)
		n, err := c.Read(buf)
		if err != nil {
			return got
		}
		got = append(got, append([]byte(nil), buf[:n]...))
	}
}

// plainConnect is a CONNECT datagram as the client sends it: padded to 512 bytes.
func plainConnect(nonce uint64, info string, cookie []byte) []byte {
	b := wire.BeginDatagram(nil, wire.Header{})
	b = wire.AppendConnect(b, nonce, info, cookie)
	if pad := wire.MinConnectDatagram - (len(b) + wire.TrailerSize); pad > 0 {
		b = wire.AppendPad(b, max(pad, wire.FrameHeaderSize))
	}
	return wire.FinishDatagram(b)
}

// plainDatagram is a request datagram of session with floor, carrying frames.
func plainDatagram(session, floor uint64, frames ...[]byte) []byte {
	b := wire.BeginDatagram(nil, wire.Header{Session: session, Floor: floor})
	for _, f := range frames {
		b = append(b, f...)
	}
	return wire.FinishDatagram(b)
}

// TestAttackWrongKeyGetsErrAuth: against a server with keys, a client with a wrong key,
// an unknown key id or no key gets ErrAuth from Open within its timeout; and from a raw
// socket, nothing the server sends back is larger than what drew it, and nothing comes
// back at all for a datagram smaller than a CONNECT.
func TestAttackWrongKeyGetsErrAuth(t *testing.T) {
	good := randomKey()
	d := newDaemon(t, netmutexdBin(t), "-key-file", writeKeyFile(t, keyLine(1, good, false)), "-log-level", "info")
	d.start()

	// The right key works.
	nm, err := netmutex.Open(5, 100*time.Millisecond, []string{d.addr}, &netmutex.Options{KeyFile: writeKeyFile(t, keyLine(1, good, false))})
	require.NoError(t, err, "the right key")
	var l netmutex.Lock
	require.NoError(t, nm.Lock(5, 100*time.Millisecond, &l, "k", time.Second))
	require.NoError(t, nm.Close(5, 100*time.Millisecond))

	const retries, timeout = 4, 100 * time.Millisecond
	for _, tc := range []struct{ name, keyFile string }{
		{"wrong secret", writeKeyFile(t, keyLine(1, randomKey(), false))},
		{"unknown key id", writeKeyFile(t, keyLine(7, randomKey(), false))},
		{"no key", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			nm, err := netmutex.Open(retries, timeout, []string{d.addr}, &netmutex.Options{KeyFile: tc.keyFile})
			took := time.Since(start)
			if nm != nil {
				nm.Close(1, timeout)
			}
			require.ErrorIs(t, err, netmutex.ErrAuth)
			assert.Less(t, took, retries*timeout+500*time.Millisecond, "Open took longer than its timeout")
		})
	}

	t.Run("raw socket: no reply larger than its request", func(t *testing.T) {
		c := rawSocket(t, d.addr)
		wrong, err := seal.NewKey(1, bytes.Repeat([]byte{0x42}, seal.KeySize), false)
		require.NoError(t, err)
		unknown, err := seal.NewKey(9, bytes.Repeat([]byte{0x43}, seal.KeySize), false)
		require.NoError(t, err)
		sealer := seal.NewSealer()
		// The plain CONNECT inside a sealed one is at least 512 bytes, so the sealed
		// datagram is 556: the smallest a client sends.
		garbage := make([]byte, 600)
		rand.Read(garbage)
		sent := map[string][]byte{
			"plain CONNECT":                 plainConnect(1, "attacker", nil),
			"plain CONNECT with cookie":     plainConnect(2, "attacker", bytes.Repeat([]byte{1}, wire.CookieSize)),
			"CONNECT under a wrong secret":  sealer.Seal(nil, wrong, plainConnect(3, "attacker", nil)),
			"CONNECT under an unknown key":  sealer.Seal(nil, unknown, plainConnect(4, "attacker", nil)),
			"small sealed under wrong key":  sealer.Seal(nil, wrong, plainDatagram(0, 0, wire.AppendEmpty(nil, wire.OpPing, 5))),
			"plain PING":                    plainDatagram(0, 0, wire.AppendEmpty(nil, wire.OpPing, 6)),
			"plain LOCK":                    plainDatagram(1, 0, wire.AppendLock(nil, 7, 1000, "k")),
			"garbage":                       garbage,
			"garbage claiming to be sealed": append([]byte{seal.Version, 1, 0x02, 0x58}, garbage[4:]...),
		}
		for name, b := range sent {
			_, err := c.Write(b)
			require.NoError(t, err, name)
			for _, reply := range drain(c, 100*time.Millisecond) {
				assert.LessOrEqual(t, len(reply), len(b), "%s (%d bytes) drew a reply of %d bytes", name, len(b), len(reply))
				if len(b) < wire.MinConnectDatagram {
					t.Errorf("%s (%d bytes) drew a reply of %d bytes; want none", name, len(b), len(reply))
				}
			}
		}
		// And the refusal the client relies on is there: a plain ERROR AUTH.
		_, err = c.Write(sent["plain CONNECT"])
		require.NoError(t, err)
		replies := drain(c, 300*time.Millisecond)
		require.NotEmpty(t, replies, "no ERROR AUTH to a plain CONNECT (rate limited?)")
		dg, err := wire.Parse(replies[0], true)
		require.NoError(t, err)
		var f wire.Frame
		require.True(t, dg.Next(&f))
		assert.Equal(t, wire.OpError, f.Op)
		assert.Equal(t, wire.CodeAuth, f.Code)
	})
}

// TestAttackManyConnectsNoAmplification: 98 CONNECTs in one datagram drew 98 replies
// (5.4x the bytes); now a datagram may carry one CONNECT only, and this one draws nothing.
func TestAttackManyConnectsNoAmplification(t *testing.T) {
	d := newDaemon(t, netmutexdBin(t), "-log-level", "info")
	d.start()
	c := rawSocket(t, d.addr)
	b := wire.BeginDatagram(nil, wire.Header{})
	n := 0
	for len(b)+wire.FrameHeaderSize+3+wire.TrailerSize <= wire.MaxDatagram {
		n++
		b = wire.AppendConnect(b, uint64(n), "", nil)
	}
	b = wire.FinishDatagram(b)
	require.GreaterOrEqual(t, n, 90)
	for i := 0; i < 3; i++ {
		_, err := c.Write(b)
		require.NoError(t, err)
	}
	got := drain(c, 300*time.Millisecond)
	total := 0
	for _, r := range got {
		total += len(r)
	}
	assert.Empty(t, got, "%d CONNECTs in one datagram of %d bytes drew %d datagrams, %d bytes", n, len(b), len(got), total)
	// One CONNECT alone draws a COOKIE smaller than itself.
	one := plainConnect(1, "", nil)
	_, err := c.Write(one)
	require.NoError(t, err)
	got = drain(c, 300*time.Millisecond)
	require.Len(t, got, 1, "one CONNECT: want one COOKIE")
	assert.Less(t, len(got[0]), len(one))
}

// TestAttackInsecureListen: without keys, netmutexd refuses to serve an address other
// hosts can reach unless told -insecure; with -insecure or with keys it starts.
func TestAttackInsecureListen(t *testing.T) {
	bin := netmutexdBin(t)
	cmd := exec.Command(bin, "-listen", "0.0.0.0:0", "-data", filepath.Join(t.TempDir(), "data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	require.NoError(t, cmd.Start())
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		require.True(t, errors.As(err, &exit), "netmutexd -listen 0.0.0.0:0 without keys: want a non-zero exit, got %v; output:\n%s", err, out.String())
		assert.NotZero(t, exit.ExitCode())
		assert.Contains(t, out.String(), "-insecure", "the refusal must name -insecure")
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("netmutexd -listen 0.0.0.0:0 without keys kept running; output:\n%s", out.String())
	}

	for _, extra := range [][]string{{"-insecure"}, {"-key-file", newKeyFile(t)}} {
		t.Run(strings.TrimPrefix(extra[0], "-"), func(t *testing.T) {
			d := newDaemon(t, bin, append([]string{"-listen", "0.0.0.0:0", "-log-level", "info"}, extra...)...)
			d.start()
			assert.True(t, strings.HasPrefix(d.addr, "0.0.0.0:") || strings.HasPrefix(d.addr, "[::]:"), "serving on %s", d.addr)
			d.kill()
		})
	}
}

// sniffer is a UDP relay between one client and the server that reads the plain
// datagrams going through: what an adversary on the path sees of a client without keys.
type sniffer struct {
	client   *net.UDPConn // the client sends here
	upstream *net.UDPConn // to the server
	mu       sync.Mutex
	peer     *net.UDPAddr
	session  uint64
	lockIDs  []uint64 // ids of the LOCK frames seen, in order
	maxID    uint64
	done     chan struct{}
}

func newSniffer(t *testing.T, server string) *sniffer {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", server)
	require.NoError(t, err)
	up, err := net.DialUDP("udp", nil, ua)
	require.NoError(t, err)
	cl, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	s := &sniffer{client: cl, upstream: up, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, from, err := cl.ReadFromUDP(buf)
			if err != nil {
				return
			}
			s.observe(buf[:n], from)
			up.Write(buf[:n])
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP refusals while the server is away
			}
			s.mu.Lock()
			peer := s.peer
			s.mu.Unlock()
			if peer != nil {
				cl.WriteToUDP(buf[:n], peer)
			}
		}
	}()
	t.Cleanup(func() {
		cl.Close()
		up.Close()
		wg.Wait()
	})
	return s
}

func (s *sniffer) addr() string { return s.client.LocalAddr().String() }

func (s *sniffer) observe(b []byte, from *net.UDPAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peer = from
	d, err := wire.Parse(b, false)
	if err != nil {
		return
	}
	if d.Session != 0 {
		s.session = d.Session
	}
	var f wire.Frame
	for d.Next(&f) {
		if f.Op == wire.OpLock {
			s.lockIDs = append(s.lockIDs, f.ID)
		}
		if f.Op != wire.OpConnect && f.ID > s.maxID {
			s.maxID = f.ID
		}
	}
}

func (s *sniffer) seen() (session, lastLock, maxID uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lockIDs) > 0 {
		lastLock = s.lockIDs[len(s.lockIDs)-1]
	}
	return s.session, lastLock, s.maxID
}

// TestAttackForgedRequestsUnderVictimSession: without keys, an adversary who sees a
// victim's datagrams (its session id and lock id) sends, from its own socket, requests
// under the victim's session: DISCONNECT, UNLOCKs with ids around the victim's lock id
// (and 1..60), a TOUCH with floor 2^62, a 1 ms LOCK and a 1 ms UPDATE of the victim's
// lock. Each of these once stole the key, isolated the victim or cut it off for good;
// now the server binds a session to its CONNECT's address and drops them all, without
// reply: the victim keeps its lock, and can Update and Unlock it.
func TestAttackForgedRequestsUnderVictimSession(t *testing.T) {
	d := newDaemon(t, netmutexdBin(t), "-max-ttl", "5s", "-session-timeout", "5s", "-log-level", "info")
	d.start()
	sn := newSniffer(t, d.addr)
	const key = "victim-key"
	const retries, timeout = 5, 100 * time.Millisecond

	victim, err := netmutex.Open(retries, timeout, []string{sn.addr()}, &netmutex.Options{IsolationInfo: "victim"})
	require.NoError(t, err)
	defer victim.Close(retries, timeout)
	var l netmutex.Lock
	require.NoError(t, victim.Lock(retries, timeout, &l, key, 3*time.Second))
	fence := l.FenceID()
	session, lockID, maxID := sn.seen()
	require.NotZero(t, session, "the sniffer saw no session id")
	require.NotZero(t, lockID, "the sniffer saw no LOCK")
	t.Logf("victim: session %016x, lock id %d", session, lockID)

	other, err := netmutex.Open(retries, timeout, []string{d.addr}, &netmutex.Options{IsolationInfo: "contender"})
	require.NoError(t, err)
	defer other.Close(retries, timeout)

	atk := rawSocket(t, d.addr)
	send := func(what string, b []byte) {
		t.Helper()
		_, err := atk.Write(b)
		require.NoError(t, err, what)
	}
	next := maxID + 1000 // request ids the victim has not used yet
	// DISCONNECT: the victim's session closed, its key free for another.
	send("DISCONNECT", plainDatagram(session, 0, wire.AppendEmpty(nil, wire.OpDisconnect, next)))
	next++
	// UNLOCKs with the ids around the victim's lock id, and 1..60 (ids from 1, as they were).
	var frames [][]byte
	flush := func() {
		if len(frames) > 0 {
			send("UNLOCK", plainDatagram(session, 0, frames...))
			frames = frames[:0]
		}
	}
	size := wire.HeaderSize + wire.TrailerSize
	addUnlock := func(lid uint64) {
		f := wire.AppendUnlock(nil, next, lid, key)
		next++
		if size+len(f) > wire.MaxDatagram {
			flush()
			size = wire.HeaderSize + wire.TrailerSize
		}
		frames = append(frames, f)
		size += len(f)
	}
	for lid := lockID - min(lockID-1, 60); lid <= lockID+60; lid++ {
		addUnlock(lid)
	}
	for lid := uint64(1); lid <= 60; lid++ {
		addUnlock(lid)
	}
	flush()
	// A 1 ms UPDATE of the victim's lock and a 1 ms LOCK: an expiry isolates the session.
	send("UPDATE 1ms", plainDatagram(session, 0, wire.AppendUpdate(nil, next, lockID, 1, key)))
	next++
	send("LOCK 1ms", plainDatagram(session, 0, wire.AppendLock(nil, next, 1, "another-key")))
	next++
	// TOUCH with floor 2^62: every later request of the victim below the floor dropped.
	send("TOUCH floor 2^62", plainDatagram(session, 1<<62, wire.AppendEmpty(nil, wire.OpTouch, next)))

	for _, r := range drain(atk, 300*time.Millisecond) {
		t.Errorf("a forged datagram drew a reply of %d bytes; want none (dropped)", len(r))
	}

	// The key is still the victim's.
	var lo netmutex.Lock
	assert.ErrorIs(t, other.Lock(retries, timeout, &lo, key, time.Second), netmutex.ErrLocked, "another client was granted the victim's key")
	require.NoError(t, victim.Update(retries, timeout, &l, 3*time.Second), "the victim's Update after the forgeries")
	assert.Equal(t, fence, l.FenceID())
	var l2 netmutex.Lock
	require.NoError(t, victim.Lock(retries, timeout, &l2, "victim-key-2", time.Second), "the victim's next Lock after the forgeries")
	require.NoError(t, victim.Unlock(retries, timeout, &l2))
	require.NoError(t, victim.Unlock(retries, timeout, &l), "the victim's Unlock after the forgeries")
	require.NoError(t, other.Lock(retries, timeout, &lo, key, time.Second), "the key after the victim released it")
	assert.Greater(t, lo.FenceID(), fence)
	require.NoError(t, other.Unlock(retries, timeout, &lo))
}

// TestAttackUnlockAllNeedsAdmin: UNLOCKALL from a session whose key is not marked admin
// gets ErrForbidden and changes nothing (it once released every lock and isolated every
// holder); from an admin key it releases every lock.
func TestAttackUnlockAllNeedsAdmin(t *testing.T) {
	user, admin := randomKey(), randomKey()
	d := newDaemon(t, netmutexdBin(t), "-key-file", writeKeyFile(t, keyLine(1, user, false), keyLine(2, admin, true)), "-log-level", "info")
	d.start()
	userKeys := writeKeyFile(t, keyLine(1, user, false))
	const retries, timeout = 5, 100 * time.Millisecond

	victim, err := netmutex.Open(retries, timeout, []string{d.addr}, &netmutex.Options{KeyFile: userKeys, IsolationInfo: "victim"})
	require.NoError(t, err)
	defer victim.Close(retries, timeout)
	var l netmutex.Lock
	require.NoError(t, victim.Lock(retries, timeout, &l, "k", 3*time.Second))

	attacker, err := netmutex.Open(retries, timeout, []string{d.addr}, &netmutex.Options{KeyFile: userKeys, IsolationInfo: "attacker"})
	require.NoError(t, err)
	defer attacker.Close(retries, timeout)
	require.ErrorIs(t, attacker.UnlockAll(retries, timeout), netmutex.ErrForbidden)

	var la netmutex.Lock
	assert.ErrorIs(t, attacker.Lock(retries, timeout, &la, "k", time.Second), netmutex.ErrLocked, "the key after a refused UNLOCKALL")
	require.NoError(t, victim.Update(retries, timeout, &l, 3*time.Second), "the victim after a refused UNLOCKALL")

	// The log names who asked.
	time.Sleep(50 * time.Millisecond)
	log, _ := os.ReadFile(d.logPath)
	assert.Contains(t, string(log), "UNLOCKALL", "UNLOCKALL is not logged")

	// The admin key may: the victim's lock is released (and its session isolated).
	opKeys := writeKeyFile(t, keyLine(2, admin, true))
	op, err := netmutex.Open(retries, timeout, []string{d.addr}, &netmutex.Options{KeyFile: opKeys, IsolationInfo: "operator"})
	require.NoError(t, err)
	defer op.Close(retries, timeout)
	require.NoError(t, op.UnlockAll(retries, timeout))
	require.Error(t, victim.Update(retries, timeout, &l, time.Second), "the victim's lock survived an admin's UNLOCKALL")
	require.NoError(t, attacker.Lock(retries, timeout, &la, "k", time.Second), "the key after an admin's UNLOCKALL")
}
