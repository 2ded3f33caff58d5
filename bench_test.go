package netmutex

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netmutex/netmutex/internal/wire"
)

// benchLockUnlock runs lock+unlock pairs from par goroutines over one NetMutex, each
// goroutine on its own keys, so every pair is granted.
func benchLockUnlock(b *testing.B, par int, opts *Options) {
	srv := startServer(b, nil)
	nm := openClient(b, srv, opts)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	if par == 1 {
		var l Lock
		for i := 0; i < b.N; i++ {
			if err := nm.Lock(3, time.Second, &l, "bench:1", time.Minute); err != nil {
				b.Fatal(err)
			}
			if err := nm.Unlock(10, time.Second, &l); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(max(1, par/2)) // GOMAXPROCS is 2 here: par goroutines in all
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		key := "bench:" + strconv.FormatInt(next.Add(1), 10)
		var l Lock
		for pb.Next() {
			if err := nm.Lock(10, time.Second, &l, key, time.Minute); err != nil {
				b.Error(err)
				return
			}
			if err := nm.Unlock(10, time.Second, &l); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	st := nm.Stats()
	if st.DatagramsOut > 0 && st.SendCalls > 0 {
		b.ReportMetric(float64(st.FramesOut)/float64(st.DatagramsOut), "frames/dgram")
		b.ReportMetric(float64(st.DatagramsOut)/float64(st.SendCalls), "dgrams/call")
	}
	b.ReportMetric(float64(st.Retransmits), "retransmits")
	ss := srv.Stats()
	if ss.DatagramsOut > 0 && ss.SyscallsIn > 0 {
		b.ReportMetric(float64(ss.Datagrams)/float64(ss.SyscallsIn), "srv-dgrams/recv")
		b.ReportMetric(float64(ss.Replies)/float64(ss.DatagramsOut), "srv-frames/dgram")
	}
}

func BenchmarkLockUnlock(b *testing.B) {
	for _, par := range []int{1, 16, 256} {
		b.Run("par="+strconv.Itoa(par), func(b *testing.B) { benchLockUnlock(b, par, nil) })
	}
}

// BenchmarkLockUnlockUnbatched is the baseline: the same pipeline sending every request
// in a datagram and a system call of its own.
func BenchmarkLockUnlockUnbatched(b *testing.B) {
	for _, par := range []int{16, 256} {
		b.Run("par="+strconv.Itoa(par), func(b *testing.B) { benchLockUnlock(b, par, &Options{unbatched: true}) })
	}
}

func BenchmarkUpdate(b *testing.B) {
	srv := startServer(b, nil)
	nm := openClient(b, srv, nil)
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(128)
	b.RunParallel(func(pb *testing.PB) {
		var l Lock
		if err := nm.Lock(3, time.Second, &l, "update:"+strconv.FormatInt(next.Add(1), 10), time.Minute); err != nil {
			b.Error(err)
			return
		}
		for pb.Next() {
			if err := nm.Update(3, time.Second, &l, time.Minute); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkEncodeLock(b *testing.B) {
	var c serverConn
	c.requests.init(&c)
	r := c.requests.acquire(wire.OpLock, 1, 0, 0)
	p := params{op: wire.OpLock, key: "job:123456", ttlMs: 60000}
	b.ReportAllocs()
	for b.Loop() {
		p.encode(r)
	}
}

func BenchmarkDecodeReplies(b *testing.B) {
	d := wire.BeginDatagram(nil, wire.Header{Session: 1})
	for i := uint64(1); i <= 40; i++ {
		d = wire.AppendOK(d, i, i)
	}
	d = wire.FinishDatagram(d)
	b.ReportAllocs()
	b.SetBytes(int64(len(d)))
	var f wire.Frame
	for b.Loop() {
		dg, err := wire.Parse(d, true)
		if err != nil {
			b.Fatal(err)
		}
		for dg.Next(&f) {
			_ = replyResult(&f, dg.Session)
		}
	}
}
