package wire

import (
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// datagram wraps frames appended by add in a finished datagram.
func datagram(h Header, add func([]byte) []byte) []byte {
	return FinishDatagram(add(BeginDatagram(nil, h)))
}

func requestSeeds() [][]byte {
	h := Header{Session: 0x0102030405060708, Floor: 3}
	return [][]byte{
		datagram(h, func(b []byte) []byte { return AppendLock(b, 7, 1000, "job:1") }),
		datagram(h, func(b []byte) []byte {
			b = AppendLock(b, 7, 1000, "a")
			b = AppendUpdate(b, 8, 7, 2000, "a")
			b = AppendUnlock(b, 9, 7, "a")
			b = AppendEmpty(b, OpTouch, 10)
			b = AppendEmpty(b, OpUnlockAll, 11)
			b = AppendEmpty(b, OpDisconnect, 12)
			b = AppendLockWait(b, 14, 1000, 5000, "w")
			b = AppendLockMany(b, 15, 1000, false, 0, []string{"a", "bb", "ccc"})
			b = AppendLockMany(b, 16, 1000, true, 0, []string{"x"})
			return AppendEmpty(b, OpPing, 13)
		}),
		datagram(Header{}, func(b []byte) []byte {
			b = AppendConnect(b, 99, "Hostname: x\nPid: 1", nil)
			return AppendPad(b, MinConnectDatagram-len(b)-TrailerSize)
		}),
	}
}

func replySeeds() [][]byte {
	h := Header{Session: 42, Flags: FlagBusy}
	return [][]byte{
		datagram(h, func(b []byte) []byte {
			b = AppendOK(b, 1, 77)
			b = AppendEmpty(b, OpLocked, 2)
			b = AppendEmpty(b, OpIsolated, 3)
			b = AppendEmpty(b, OpDisconnected, 4)
			b = AppendEmpty(b, OpPong, 5)
			b = AppendEmpty(b, OpQueued, 8)
			b = AppendRedirect(b, 6, 2, "127.0.0.1:15664")
			return AppendError(b, 7, CodeLockDelay, "lock-delay")
		}),
		datagram(Header{}, func(b []byte) []byte { return AppendCookie(b, 99, []byte("0123456789abcdef")) }),
		datagram(Header{Session: 1 << 32}, func(b []byte) []byte {
			return AppendConnected(b, 99, &Connected{
				Session: 1 << 32, MaxTTLMs: 60000, SessionTimeoutMs: 15000, RetransmitWindowMs: 60000,
				ServerID: 1, Servers: []Server{{1, "127.0.0.1:15663"}, {2, "127.0.0.1:15664"}},
			})
		}),
	}
}

func TestRoundTrip(t *testing.T) {
	for _, d := range requestSeeds() {
		checkReencode(t, d, false)
	}
	for _, d := range replySeeds() {
		checkReencode(t, d, true)
	}
}

func TestDecodeFields(t *testing.T) {
	d, err := Parse(requestSeeds()[1], false)
	require.NoError(t, err)
	assert.Equal(t, uint64(0x0102030405060708), d.Session)
	assert.Equal(t, uint64(3), d.Floor)
	var f Frame
	require.True(t, d.Next(&f))
	assert.Equal(t, OpLock, f.Op)
	assert.Equal(t, uint64(7), f.ID)
	assert.Equal(t, uint32(1000), f.TTLMs)
	assert.Equal(t, "a", string(f.Key))
	require.True(t, d.Next(&f))
	assert.Equal(t, OpUpdate, f.Op)
	assert.Equal(t, uint64(8), f.ID)
	assert.Equal(t, uint64(7), f.LockID)
	assert.Equal(t, uint32(2000), f.TTLMs)
	assert.Equal(t, "a", string(f.Key))
	require.True(t, d.Next(&f))
	assert.Equal(t, OpUnlock, f.Op)
	assert.Equal(t, uint64(9), f.ID)
	assert.Equal(t, uint64(7), f.LockID)
	assert.Equal(t, "a", string(f.Key))

	r, err := Parse(replySeeds()[2], true)
	require.NoError(t, err)
	require.True(t, r.Next(&f))
	c := f.Connected()
	assert.Equal(t, uint32(60000), c.MaxTTLMs)
	require.Len(t, c.Servers, 2)
	assert.Equal(t, "127.0.0.1:15664", c.Servers[1].Addr)
	assert.Equal(t, ConnectedSize(c.Servers), FrameHeaderSize+len(f.servers)+connectedFixed)
}

func TestDecodeWaiting(t *testing.T) {
	d, err := Parse(requestSeeds()[1], false)
	require.NoError(t, err)
	var f Frame
	for d.Next(&f) && f.Op != OpLockMany {
		if f.Op == OpLock && f.ID == 14 {
			assert.Equal(t, uint16(LockWait), f.Flags)
			assert.Equal(t, uint32(5000), f.WaitMs)
			assert.Equal(t, "w", string(f.Key))
		}
	}
	require.Equal(t, OpLockMany, f.Op)
	assert.Equal(t, 3, f.KeyCount)
	assert.Zero(t, f.Flags)
	var keys []string
	for rest := f.Keys; len(rest) > 0; {
		var k []byte
		k, rest = NextKey(rest)
		keys = append(keys, string(k))
	}
	assert.Equal(t, []string{"a", "bb", "ccc"}, keys)
	require.True(t, d.Next(&f))
	assert.Equal(t, OpLockMany, f.Op)
	assert.Equal(t, uint16(LockWait), f.Flags)

	bad := func(add func(b []byte) []byte) error {
		_, err := Parse(datagram(Header{Session: 1}, add), false)
		return err
	}
	assert.ErrorIs(t, bad(func(b []byte) []byte { return AppendLockMany(b, 1, 1, false, 0, []string{"a", ""}) }), ErrBadBody, "an empty key")
	assert.ErrorIs(t, bad(func(b []byte) []byte { return AppendLockMany(b, 1, 1, false, 0, nil) }), ErrBadBody, "no key")
	many := make([]string, MaxManyKeys+1)
	for i := range many {
		many[i] = "k"
	}
	assert.ErrorIs(t, bad(func(b []byte) []byte { return AppendLockMany(b, 1, 1, false, 0, many) }), ErrBadBody, "too many keys")
}

func TestConnectedSize(t *testing.T) {
	servers := []Server{{1, "127.0.0.1:15663"}, {2, "[::1]:15664"}, {3, string(make([]byte, 300))}}
	b := AppendConnected(nil, 1, &Connected{Servers: servers})
	assert.Len(t, b, ConnectedSize(servers), "an address over 255 bytes is left out of both")
}

func TestPutFrameID(t *testing.T) {
	want := AppendLock(nil, 0x1122334455667788, 1000, "k")
	got := AppendLock(nil, 0, 1000, "k")
	PutFrameID(got, 0x1122334455667788)
	assert.Equal(t, want, got)
}

// resum recomputes the checksum of d after a test tampered with it.
func resum(d []byte) []byte {
	n := len(d) - TrailerSize
	binary.BigEndian.PutUint32(d[n:], crc32.Checksum(d[:n], castagnoli))
	return d
}

func TestParseRejects(t *testing.T) {
	good := requestSeeds()[0]
	mut := func(f func(d []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := map[string]struct {
		d       []byte
		replies bool
		want    error
	}{
		"short":    {good[:20], false, ErrShort},
		"version":  {mut(func(d []byte) []byte { d[0] = 9; return resum(d) }), false, ErrVersion},
		"flags":    {mut(func(d []byte) []byte { d[1] = 0x80; return resum(d) }), false, ErrFlags},
		"length":   {mut(func(d []byte) []byte { d[3]--; return resum(d) }), false, ErrLength},
		"checksum": {mut(func(d []byte) []byte { d[len(d)-1] ^= 0xff; return d }), false, ErrChecksum},
		"truncated": {mut(func(d []byte) []byte {
			binary.BigEndian.PutUint16(d[HeaderSize+2:], 500)
			return resum(d)
		}), false, ErrTruncated},
		"body":          {mut(func(d []byte) []byte { d[HeaderSize+FrameHeaderSize+6] = 9; return resum(d) }), false, ErrBadBody},
		"lock flags":    {mut(func(d []byte) []byte { d[HeaderSize+FrameHeaderSize+4] = 1; return resum(d) }), false, ErrBadBody},
		"unknown op":    {mut(func(d []byte) []byte { d[HeaderSize] = 0x55; return resum(d) }), false, ErrUnknownOp},
		"direction":     {good, true, ErrDirection},
		"small connect": {datagram(Header{}, func(b []byte) []byte { return AppendConnect(b, 1, "x", nil) }), false, ErrSmallConnect},
		"two connects": {datagram(Header{}, func(b []byte) []byte {
			b = AppendConnect(b, 1, "x", nil)
			b = AppendConnect(b, 2, "y", nil)
			return AppendPad(b, MinConnectDatagram-len(b)-TrailerSize)
		}), false, ErrConnectAlone},
		"connect and lock": {datagram(Header{}, func(b []byte) []byte {
			b = AppendConnect(b, 1, "x", nil)
			b = AppendLock(b, 2, 1000, "k")
			return AppendPad(b, MinConnectDatagram-len(b)-TrailerSize)
		}), false, ErrConnectAlone},
		"cookie size": {datagram(Header{}, func(b []byte) []byte {
			b = AppendConnect(b, 1, "x", []byte("short"))
			return AppendPad(b, MinConnectDatagram-len(b)-TrailerSize)
		}), false, ErrBadBody},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(tc.d, tc.replies)
			assert.ErrorIs(t, err, tc.want)
		})
	}
}

// reencode writes f again with the encoders the client and the server send with, so
// that fuzzing the decoder fuzzes them too. Requests are encoded with id 0 and patched
// with PutFrameID, as the client's send loop does.
func reencode(b []byte, f *Frame) []byte {
	start := len(b)
	switch f.Op {
	case OpPad:
		return AppendPad(b, FrameHeaderSize+f.PadLen)
	case OpConnect:
		return AppendConnect(b, f.ID, string(f.Info), f.Cookie)
	case OpCookie:
		return AppendCookie(b, f.ID, f.Cookie)
	case OpLock:
		if f.Flags&LockWait != 0 {
			b = AppendLockWait(b, 0, f.TTLMs, f.WaitMs, string(f.Key))
		} else {
			b = AppendLock(b, 0, f.TTLMs, string(f.Key))
		}
	case OpLockMany:
		var keys []string
		for rest := f.Keys; len(rest) > 0; {
			var k []byte
			k, rest = NextKey(rest)
			keys = append(keys, string(k))
		}
		b = AppendLockMany(b, 0, f.TTLMs, f.Flags&LockWait != 0, f.WaitMs, keys)
	case OpUpdate:
		b = AppendUpdate(b, 0, f.LockID, f.TTLMs, string(f.Key))
	case OpUnlock:
		b = AppendUnlock(b, 0, f.LockID, string(f.Key))
	case OpOK:
		return AppendOK(b, f.ID, f.Fence)
	case OpRedirect:
		return AppendRedirect(b, f.ID, f.ServerID, string(f.Addr))
	case OpError:
		return AppendError(b, f.ID, f.Code, string(f.Text))
	case OpConnected:
		c := f.Connected()
		return AppendConnected(b, f.ID, &c)
	default:
		return AppendEmpty(b, f.Op, f.ID)
	}
	PutFrameID(b[start:], f.ID)
	return b
}

// checkReencode parses d and, if it is valid, encodes it again to the same bytes.
func checkReencode(t *testing.T, d []byte, replies bool) {
	t.Helper()
	dg, err := Parse(d, replies)
	if err != nil {
		return
	}
	out := BeginDatagram(nil, dg.Header)
	var f Frame
	for dg.Next(&f) {
		out = reencode(out, &f)
	}
	out = FinishDatagram(out)
	require.Equal(t, hex.EncodeToString(d), hex.EncodeToString(out), "re-encoding differs")
}

func FuzzParseRequests(f *testing.F) {
	for _, d := range requestSeeds() {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, d []byte) { checkReencode(t, d, false) })
}

func FuzzParseReplies(f *testing.F) {
	for _, d := range replySeeds() {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, d []byte) { checkReencode(t, d, true) })
}

// FuzzEncodeRequests drives the client's encoders with arbitrary fields: whatever they
// are given within the API's limits, the datagram parses back to the same fields.
func FuzzEncodeRequests(f *testing.F) {
	f.Add(uint64(1), uint64(7), uint32(1000), "job:1", uint64(3))
	f.Add(uint64(1<<63), uint64(0), uint32(0), "k", uint64(0))
	f.Fuzz(func(t *testing.T, id, lockID uint64, ttlMs uint32, key string, session uint64) {
		if len(key) == 0 || len(key) > MaxKey {
			return // the API refuses these before encoding
		}
		b := BeginDatagram(make([]byte, 0, MaxDatagram), Header{Session: session, Floor: id})
		for _, op := range []Op{OpLock, OpUpdate, OpUnlock} {
			start := len(b)
			switch op {
			case OpLock:
				b = AppendLock(b, 0, ttlMs, key)
			case OpUpdate:
				b = AppendUpdate(b, 0, lockID, ttlMs, key)
			case OpUnlock:
				b = AppendUnlock(b, 0, lockID, key)
				require.Equal(t, UnlockSize(len(key)), len(b)-start)
			}
			PutFrameID(b[start:], id+uint64(op))
		}
		b = FinishDatagram(b)
		d, err := Parse(b, false)
		require.NoError(t, err)
		require.Equal(t, session, d.Session)
		var fr Frame
		for _, op := range []Op{OpLock, OpUpdate, OpUnlock} {
			require.True(t, d.Next(&fr))
			require.Equal(t, op, fr.Op)
			require.Equal(t, id+uint64(op), fr.ID)
			require.Equal(t, key, string(fr.Key))
			if op != OpLock {
				require.Equal(t, lockID, fr.LockID)
			}
			if op != OpUnlock {
				require.Equal(t, ttlMs, fr.TTLMs)
			}
		}
		require.False(t, d.Next(&fr))
	})
}

func TestEncodeAllocs(t *testing.T) {
	buf := make([]byte, 0, MaxDatagram)
	allocs := testing.AllocsPerRun(100, func() {
		b := BeginDatagram(buf[:0], Header{Session: 1})
		b = AppendLock(b, 1, 1000, "key")
		b = FinishDatagram(b)
		d, err := Parse(b, false)
		if err != nil {
			panic(err)
		}
		var f Frame
		for d.Next(&f) {
		}
	})
	assert.Zero(t, allocs, "encode+decode allocates")
}
