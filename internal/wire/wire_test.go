package wire

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// datagram wraps frames appended by add in a finished datagram.
func datagram(h Header, add func([]byte) []byte) []byte {
	return FinishDatagram(add(BeginDatagram(nil, h)), 0)
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
			return AppendEmpty(b, OpPing, 13)
		}),
		datagram(Header{}, func(b []byte) []byte {
			b = AppendConnect(b, 99, "Hostname: x\nPid: 1")
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
			b = AppendRedirect(b, 6, 2, "127.0.0.1:15664")
			return AppendError(b, 7, CodeLockDelay, "lock-delay")
		}),
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
	if err != nil {
		t.Fatal(err)
	}
	if d.Session != 0x0102030405060708 || d.Floor != 3 {
		t.Fatalf("header %+v", d.Header)
	}
	var f Frame
	d.Next(&f)
	if f.Op != OpLock || f.ID != 7 || f.TTLMs != 1000 || string(f.Key) != "a" {
		t.Fatalf("LOCK %+v", f)
	}
	d.Next(&f)
	if f.Op != OpUpdate || f.ID != 8 || f.LockID != 7 || f.TTLMs != 2000 || string(f.Key) != "a" {
		t.Fatalf("UPDATE %+v", f)
	}
	d.Next(&f)
	if f.Op != OpUnlock || f.ID != 9 || f.LockID != 7 || string(f.Key) != "a" {
		t.Fatalf("UNLOCK %+v", f)
	}
	r, err := Parse(replySeeds()[1], true)
	if err != nil {
		t.Fatal(err)
	}
	r.Next(&f)
	c := f.Connected()
	if c.MaxTTLMs != 60000 || len(c.Servers) != 2 || c.Servers[1].Addr != "127.0.0.1:15664" {
		t.Fatalf("CONNECTED %+v", c)
	}
}

func TestParseRejects(t *testing.T) {
	good := requestSeeds()[0]
	fix := func(d []byte) []byte { // recompute the checksum after tampering
		n := len(d) - TrailerSize
		SetFlags(d, d[1])
		_ = n
		return d
	}
	mut := func(f func(d []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := map[string]struct {
		d       []byte
		replies bool
		want    error
	}{
		"short":    {good[:20], false, ErrShort},
		"version":  {mut(func(d []byte) []byte { d[0] = 9; return fix(d) }), false, ErrVersion},
		"flags":    {mut(func(d []byte) []byte { d[1] = 0x80; return fix(d) }), false, ErrFlags},
		"length":   {mut(func(d []byte) []byte { d[3]--; return fix(d) }), false, ErrLength},
		"checksum": {mut(func(d []byte) []byte { d[len(d)-1] ^= 0xff; return d }), false, ErrChecksum},
		"truncated": {mut(func(d []byte) []byte {
			binary.BigEndian.PutUint16(d[HeaderSize+2:], 500)
			return fix(d)
		}), false, ErrTruncated},
		"body":          {mut(func(d []byte) []byte { d[HeaderSize+FrameHeaderSize+6] = 9; return fix(d) }), false, ErrBadBody},
		"lock flags":    {mut(func(d []byte) []byte { d[HeaderSize+FrameHeaderSize+4] = 1; return fix(d) }), false, ErrBadBody},
		"unknown op":    {mut(func(d []byte) []byte { d[HeaderSize] = 0x55; return fix(d) }), false, ErrUnknownOp},
		"direction":     {good, true, ErrDirection},
		"small connect": {datagram(Header{}, func(b []byte) []byte { return AppendConnect(b, 1, "x") }), false, ErrSmallConnect},
	}
	for name, tc := range cases {
		if _, err := Parse(tc.d, tc.replies); err != tc.want {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
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
		out = AppendFrame(out, &f)
	}
	out = FinishDatagram(out, 0)
	if !bytes.Equal(out, d) {
		t.Fatalf("re-encoding differs:\n in  %x\n out %x", d, out)
	}
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

func TestEncodeAllocs(t *testing.T) {
	buf := make([]byte, 0, MaxDatagram)
	allocs := testing.AllocsPerRun(100, func() {
		b := BeginDatagram(buf[:0], Header{Session: 1})
		b = AppendLock(b, 1, 1000, "key")
		b = FinishDatagram(b, 0)
		d, err := Parse(b, false)
		if err != nil {
			t.Fatal(err)
		}
		var f Frame
		for d.Next(&f) {
		}
	})
	if allocs != 0 {
		t.Fatalf("encode+decode allocates %v per run", allocs)
	}
}
