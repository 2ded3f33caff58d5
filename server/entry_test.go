package server

import (
	"net/netip"
	"testing"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEntryRoundTrip: what the leader writes into an entry is what every node reads.
func TestEntryRoundTrip(t *testing.T) {
	key, err := seal.NewKey(3, make([]byte, seal.KeySize), true)
	require.NoError(t, err)
	v4 := netip.MustParseAddrPort("127.0.0.1:4000")
	v6 := netip.MustParseAddrPort("[::1]:5000")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), 6000)
	nonce := seal.Nonce{Prefix: [seal.PrefixSize]byte{1, 2, 3}, Counter: 77}

	var w entryWriter
	w.isolationDone(11)
	require.True(t, w.datagram(v4, nil, seal.Nonce{}, false, 0, false, []byte("plain")))
	require.True(t, w.datagram(v6, key, nonce, true, 99, true, []byte("connect")))
	w.isolationDone(12) // after a datagram: still read first
	require.True(t, w.datagram(mapped, nil, seal.Nonce{}, false, 0, false, nil))
	b := w.take(0xabc, 123456)
	assert.True(t, w.empty(), "take starts over")

	var r entryReader
	require.NoError(t, r.read(b))
	assert.Equal(t, byte(entryBatch), r.kind)
	assert.Equal(t, uint64(0xabc), r.origin)
	assert.Equal(t, int64(123456), r.now)
	assert.Equal(t, []uint64{11, 12}, r.isos)
	var d entryDatagram
	want := []struct {
		from    netip.AddrPort
		flags   byte
		session uint64
		plain   string
	}{
		{v4, dgIPv4, 0, "plain"},
		{v6, dgConnect | dgAdmin | dgSealed, 99, "connect"},
		{mapped, 0, 0, ""},
	}
	for i, x := range want {
		ok, err := r.next(&d)
		require.NoError(t, err)
		require.True(t, ok, "datagram %d", i)
		assert.Equal(t, x.from, d.from, "datagram %d: the address as it came (a mapped one stays mapped)", i)
		assert.Equal(t, x.flags, d.flags, "datagram %d", i)
		assert.Equal(t, x.session, d.newSession, "datagram %d", i)
		assert.Equal(t, x.plain, string(d.plain), "datagram %d", i)
	}
	ok, err := r.next(&d)
	require.NoError(t, err)
	assert.False(t, ok, "three datagrams")

	require.NoError(t, r.read(leaderEntry(5, 6, 7)))
	assert.Equal(t, byte(entryLeader), r.kind)
	assert.Equal(t, uint64(7), r.floor)
}

// TestEntryFull: an entry stops taking datagrams at maxEntryBytes.
func TestEntryFull(t *testing.T) {
	var w entryWriter
	big := make([]byte, 1400)
	n := 0
	for w.datagram(netip.MustParseAddrPort("127.0.0.1:1"), nil, seal.Nonce{}, false, 0, false, big) {
		n++
	}
	assert.Equal(t, maxEntryBytes/(1400+1+4+2+2), n)
}

// FuzzEntryReader: any bytes read as an entry give errBadEntry or datagrams within them,
// never a panic.
func FuzzEntryReader(f *testing.F) {
	var w entryWriter
	w.isolationDone(1)
	w.datagram(netip.MustParseAddrPort("127.0.0.1:1"), nil, seal.Nonce{}, true, 0, false, []byte("x"))
	f.Add(w.take(1, 2))
	f.Add(leaderEntry(1, 2, 3))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r entryReader
		if r.read(b) != nil {
			return
		}
		var d entryDatagram
		for i := 0; i < 1<<16; i++ {
			ok, err := r.next(&d)
			if err != nil || !ok {
				return
			}
			if len(d.plain) > len(b) {
				t.Fatalf("a datagram longer than the entry")
			}
		}
	})
}
