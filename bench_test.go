package netmutex

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// benchLockUnlock runs lock+unlock pairs from par goroutines over one NetMutex, each
// goroutine on its own keys, so every pair is granted.
func benchLockUnlock(b *testing.B, par int) {
	srv := startServer(b, nil)
	nm := openClient(b, srv, nil)
	var next atomic.Int64
	b.ReportAllocs()
	if par == 1 {
		var l Lock
		for i := 0; i < b.N; i++ {
			if err := nm.Lock(3, time.Second, &l, "bench:1", time.Minute); err != nil {
				b.Fatal(err)
			}
			if err := nm.Unlock(3, time.Second, &l); err != nil {
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
			if err := nm.Lock(3, time.Second, &l, key, time.Minute); err != nil {
				b.Error(err)
				return
			}
			if err := nm.Unlock(3, time.Second, &l); err != nil {
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
	ss := srv.Stats()
	if ss.DatagramsOut > 0 && ss.SyscallsIn > 0 {
		b.ReportMetric(float64(ss.Datagrams)/float64(ss.SyscallsIn), "srv-dgrams/recv")
		b.ReportMetric(float64(ss.Replies)/float64(ss.DatagramsOut), "srv-frames/dgram")
	}
}

func BenchmarkLockUnlock(b *testing.B) {
	for _, par := range []int{1, 16, 256} {
		b.Run("par="+strconv.Itoa(par), func(b *testing.B) { benchLockUnlock(b, par) })
	}
}
