package seal

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	hexA = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	hexB = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100"
)

func ring(t testing.TB, text string) *Keyring {
	r, err := ParseKeys(strings.NewReader(text))
	require.NoError(t, err)
	return r
}

func TestSealOpen(t *testing.T) {
	r := ring(t, "# keys\n7 "+hexA+"  # the sealing key\n9 "+hexB+" admin\n")
	require.Equal(t, 2, r.Len())
	assert.Equal(t, uint8(7), r.Sealing().ID)
	assert.False(t, r.Lookup(7).Admin)
	assert.True(t, r.Lookup(9).Admin)

	s := NewSealer()
	plain := []byte("a plain datagram")
	d := s.Seal(nil, r.Sealing(), plain)
	require.Len(t, d, len(plain)+Overhead)
	assert.True(t, IsSealed(d))
	assert.Equal(t, uint8(7), KeyID(d))
	assert.NotContains(t, string(d), "plain", "the content is encrypted")

	got, key, nonce, err := r.Open(nil, d)
	require.NoError(t, err)
	assert.Equal(t, plain, got)
	assert.Equal(t, uint8(7), key.ID)
	assert.Equal(t, s.Prefix(), nonce.Prefix)
	assert.Equal(t, uint64(1), nonce.Counter)

	d2 := s.Seal(nil, r.Lookup(9), plain)
	_, _, nonce, err = r.Open(nil, d2)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), nonce.Counter, "the counter grows with every datagram")
	assert.NotEqual(t, d[HeaderSize:], d2[HeaderSize:])
}

func TestOpenRejects(t *testing.T) {
	r := ring(t, "7 "+hexA+"\n")
	other := ring(t, "7 "+hexB+"\n")
	d := NewSealer().Seal(nil, r.Sealing(), []byte("content"))
	for i := range d {
		bad := append([]byte(nil), d...)
		bad[i] ^= 0x40
		_, _, _, err := r.Open(nil, bad)
		assert.Error(t, err, "byte %d flipped", i)
	}
	_, _, _, err := other.Open(nil, d)
	assert.ErrorIs(t, err, ErrForged, "the same key id with other bytes")
	_, _, _, err = ring(t, "8 "+hexA+"\n").Open(nil, d)
	assert.ErrorIs(t, err, ErrUnknownKey)
	_, _, _, err = r.Open(nil, d[:Overhead-1])
	assert.ErrorIs(t, err, ErrShort)
	_, _, _, err = r.Open(nil, d[:len(d)-1])
	assert.ErrorIs(t, err, ErrLength)
	plain := append([]byte{1}, make([]byte, 60)...)
	_, _, _, err = r.Open(nil, plain)
	assert.ErrorIs(t, err, ErrNotSealed)
}

func TestRotation(t *testing.T) {
	old := ring(t, "1 "+hexA+"\n")
	both := ring(t, "2 "+hexB+"\n1 "+hexA+"\n")
	s := NewSealer()
	_, _, _, err := both.Open(nil, s.Seal(nil, old.Sealing(), []byte("x")))
	assert.NoError(t, err, "a server with the new key first still opens the old")
	_, _, _, err = old.Open(nil, s.Seal(nil, both.Sealing(), []byte("x")))
	assert.ErrorIs(t, err, ErrUnknownKey, "the new key seals once it is listed first")
}

func TestParseKeysErrors(t *testing.T) {
	cases := map[string]error{
		"":                           ErrNoKeys,
		"# only a comment\n":         ErrNoKeys,
		"0 " + hexA:                  ErrKeyID,
		"256 " + hexA:                ErrKeyID,
		"x " + hexA:                  ErrKeyID,
		"1 " + hexA[:62]:             ErrKeyBytes,
		"1 zz" + hexA[2:]:            ErrKeyBytes,
		"1 " + hexA + "\n1 " + hexB:  ErrDupKey,
		"1 " + hexA + " root":        nil, // a malformed line: an error without a sentinel
		"1":                          nil,
		"1 " + hexA + " admin extra": nil,
	}
	for text, want := range cases {
		_, err := ParseKeys(strings.NewReader(text))
		require.Error(t, err, "%q", text)
		if want != nil {
			assert.ErrorIs(t, err, want, "%q", text)
		}
	}
}

func TestWindow(t *testing.T) {
	var w Window
	assert.False(t, w.Accept(0), "counter 0 is never sent")
	assert.True(t, w.Accept(5))
	assert.False(t, w.Accept(5), "a replay")
	assert.True(t, w.Accept(3), "late but inside the window")
	assert.False(t, w.Accept(3))
	assert.True(t, w.Accept(5+WindowSize-1))
	assert.True(t, w.Accept(6))
	assert.False(t, w.Accept(4), "now too far behind")
	assert.True(t, w.Accept(10_000))
	assert.False(t, w.Accept(10_000-WindowSize))
	assert.True(t, w.Accept(10_000-WindowSize+1))
	for c := uint64(10_001); c < 10_000+3*WindowSize; c++ {
		require.True(t, w.Accept(c))
	}
	for c := uint64(10_000 + 2*WindowSize + 1); c < 10_000+3*WindowSize; c++ {
		require.False(t, w.Accept(c), "every counter once")
	}
}

func TestSealOpenAllocs(t *testing.T) {
	r := ring(t, "7 "+hexA+"\n")
	s := NewSealer()
	plain := make([]byte, 1300)
	sealed := make([]byte, 0, 1400)
	opened := make([]byte, 0, 1400)
	allocs := testing.AllocsPerRun(100, func() {
		d := s.Seal(sealed[:0], r.Sealing(), plain)
		if _, _, _, err := r.Open(opened[:0], d); err != nil {
			panic(err)
		}
	})
	assert.Zero(t, allocs)
}

func FuzzOpen(f *testing.F) {
	r := ring(f, "7 "+hexA+"\n")
	f.Add(NewSealer().Seal(nil, r.Sealing(), []byte("seed")))
	f.Add([]byte{Version, 7, 0, 44})
	f.Fuzz(func(t *testing.T, d []byte) {
		plain, key, _, err := r.Open(nil, d)
		if err == nil {
			require.NotNil(t, key)
			require.Len(t, plain, len(d)-Overhead)
		}
	})
}

func BenchmarkSeal1400(b *testing.B) {
	r := ring(b, "7 "+hexA+"\n")
	s := NewSealer()
	plain := make([]byte, 1400-Overhead)
	out := make([]byte, 0, 1400)
	b.ReportAllocs()
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		s.Seal(out[:0], r.Sealing(), plain)
	}
}

func BenchmarkOpen1400(b *testing.B) {
	r := ring(b, "7 "+hexA+"\n")
	d := NewSealer().Seal(nil, r.Sealing(), make([]byte, 1400-Overhead))
	out := make([]byte, 0, 1400)
	b.ReportAllocs()
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		if _, _, _, err := r.Open(out[:0], d); err != nil {
			b.Fatal(err)
		}
	}
}
