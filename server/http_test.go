package server

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// httpGet fetches path from s's HTTP server, with no connection kept alive (goleak).
func httpGet(t *testing.T, s *Server, path string) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + s.HTTPAddr().String() + path)
	require.NoError(t, err, "GET %s", path)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// scrape fetches /metrics and parses it with the Prometheus text parser.
func scrape(t *testing.T, s *Server) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := httpGet(t, s, "/metrics")
	require.Equal(t, http.StatusOK, code, body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	return fams
}

// metricValue is the value of the series of name with labels (name=value pairs), the
// sample count of a histogram; ok false if there is no such series.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func requireMetric(t *testing.T, fams map[string]*dto.MetricFamily, want float64, name string, labels ...string) {
	t.Helper()
	v, ok := metricValue(fams, name, labels...)
	require.True(t, ok, "no series %s%v", name, labels)
	require.Equal(t, want, v, "%s%v", name, labels)
}

func TestHTTPNone(t *testing.T) {
	s := startServer(t, testConfig(t, t.TempDir()))
	defer s.Close()
	require.Nil(t, s.HTTPAddr(), "no HTTPAddr: no HTTP server")
}

// TestHTTPServer: activity generated over UDP shows in /metrics (parsed with the
// Prometheus text parser) and /locks, and /healthz and /readyz answer until Close.
func TestHTTPServer(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.HTTPAddr = "127.0.0.1:0"
	s := startServer(t, cfg)
	closed := false
	defer func() {
		if !closed {
			s.Close()
		}
	}()
	require.NotNil(t, s.HTTPAddr())

	a, b := newClient(t, s.Addr()), newClient(t, s.Addr())
	a.connect("host-a pid 42")
	b.connect("host-b")
	_, f1 := a.lock("k1", 10*time.Second)
	requireOp(t, f1, wire.OpOK, "k1")
	_, f2 := a.lock("k2", 10*time.Second)
	requireOp(t, f2, wire.OpOK, "k2")
	id3, f3 := a.lock("k3", 10*time.Second)
	requireOp(t, f3, wire.OpOK, "k3")
	requireOp(t, a.unlock("k3", id3), wire.OpOK, "unlock k3")
	_, f := b.lock("k2", 10*time.Second)
	requireOp(t, f, wire.OpLocked, "b's k2")
	waitID := b.id()
	f = b.call(func(d []byte) []byte { return wire.AppendLockWait(d, waitID, 10000, 0, "k1") })
	requireOp(t, f, wire.OpQueued, "b waits for k1")
	a.sendRaw([]byte("not a datagram"))
	require.Eventually(t, func() bool { return s.Stats().BadDatagrams == 1 }, 5*time.Second, time.Millisecond)

	fams := scrape(t, s)
	requireMetric(t, fams, 2, "netmutex_requests_total", "op", "connect", "outcome", "connected")
	requireMetric(t, fams, 3, "netmutex_requests_total", "op", "lock", "outcome", "ok")
	requireMetric(t, fams, 1, "netmutex_requests_total", "op", "lock", "outcome", "locked")
	requireMetric(t, fams, 1, "netmutex_requests_total", "op", "lock", "outcome", "queued")
	requireMetric(t, fams, 1, "netmutex_requests_total", "op", "unlock", "outcome", "ok")
	requireMetric(t, fams, 3, "netmutex_grants_total")
	requireMetric(t, fams, 2, "netmutex_locks_held")
	requireMetric(t, fams, 2, "netmutex_sessions")
	requireMetric(t, fams, 1, "netmutex_waiters")
	requireMetric(t, fams, 0, "netmutex_lock_delay_remaining_seconds")
	requireMetric(t, fams, 1, "netmutex_bad_datagrams_total", "reason", "malformed")
	requireMetric(t, fams, 0, "netmutex_bad_datagrams_total", "reason", "peer")
	requireMetric(t, fams, 1, "netmutex_loop_running")
	st := s.Stats()
	requireMetric(t, fams, float64(st.Datagrams), "netmutex_datagrams_received_total")
	requireMetric(t, fams, float64(st.Requests), "netmutex_frames_received_total")
	requireMetric(t, fams, float64(st.Cookies), "netmutex_cookies_sent_total")
	// Every request datagram here carried one frame: as many datagrams as frames (the
	// CONNECTs that drew a COOKIE carried none the machine saw).
	requireMetric(t, fams, float64(st.Requests), "netmutex_frames_per_datagram")
	h := fams["netmutex_frames_per_datagram"].Metric[0].Histogram
	assert.Equal(t, float64(st.Requests), h.GetSampleSum())
	assert.Equal(t, h.GetSampleCount(), h.Bucket[0].GetCumulativeCount(), "all in the bucket of 1")
	in, ok := metricValue(fams, "netmutex_datagrams_per_syscall", "direction", "in")
	require.True(t, ok)
	assert.Equal(t, float64(st.Batches), in)
	fs, ok := metricValue(fams, "netmutex_fsyncs_total")
	require.True(t, ok)
	assert.GreaterOrEqual(t, fs, 2.0, "the start's state write")
	_, ok = metricValue(fams, "go_goroutines")
	assert.True(t, ok, "the Go collector")

	code, body := httpGet(t, s, "/locks")
	require.Equal(t, http.StatusOK, code, body)
	var v lockView
	require.NoError(t, json.Unmarshal([]byte(body), &v), body)
	require.Len(t, v.Locks, 2, body)
	assert.Equal(t, 2, v.LocksHeld)
	assert.False(t, v.Truncated)
	assert.Equal(t, 2, v.Sessions)
	assert.Equal(t, 1, v.Waiters)
	assert.Zero(t, v.LockDelayRemainingMS)
	for i, want := range []struct {
		key     string
		fence   uint64
		waiters int
	}{{"k1", f1.Fence, 1}, {"k2", f2.Fence, 0}} {
		l := v.Locks[i]
		assert.Equal(t, want.key, l.Key)
		assert.Equal(t, want.fence, l.Fence)
		assert.Equal(t, fmt.Sprintf("%016x", a.session), l.Session)
		assert.Equal(t, "host-a pid 42", l.HolderInfo)
		assert.Equal(t, want.waiters, l.Waiters, l.Key)
		assert.Greater(t, l.ExpiresInMS, int64(5000))
		assert.LessOrEqual(t, l.ExpiresInMS, int64(10000))
	}
	assert.Contains(t, body, `"session":"`+fmt.Sprintf("%016x", a.session)+`"`, "the contract's field names")

	code, body = httpGet(t, s, "/healthz")
	assert.Equal(t, http.StatusOK, code, body)
	code, body = httpGet(t, s, "/readyz")
	assert.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, "ready\n", body)
	code, _ = httpGet(t, s, "/nothing")
	assert.Equal(t, http.StatusNotFound, code)

	addr := s.HTTPAddr().String()
	require.NoError(t, s.Close())
	closed = true
	_, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get("http://" + addr + "/healthz")
	require.Error(t, err, "no HTTP server after Close")
}

// TestHTTPIdle: with no session and no lock the loop blocks in its read for good; a
// request to the loop wakes it.
func TestHTTPIdle(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.HTTPAddr = "127.0.0.1:0"
	s := startServer(t, cfg)
	defer s.Close()
	for range 20 {
		code, body := httpGet(t, s, "/locks")
		require.Equal(t, http.StatusOK, code, body)
		require.JSONEq(t, `{"locks":[],"locks_held":0,"truncated":false,"sessions":0,"waiters":0,"lock_delay_remaining_ms":0}`, body)
		code, _ = httpGet(t, s, "/healthz")
		require.Equal(t, http.StatusOK, code)
	}
	ticks := s.Stats().Ticks
	time.Sleep(5 * tick)
	assert.Equal(t, ticks, s.Stats().Ticks, "an idle loop does not tick")
}

// TestHTTPLockDelay: a start after a crash with a lock held shows its lock-delay in
// /metrics, /locks and /readyz (ready nonetheless), and its end.
func TestHTTPLockDelay(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.MaxTTL = 500 * time.Millisecond
	s := startServer(t, cfg)
	c := newClient(t, s.Addr())
	c.connect("x")
	_, f := c.lock("k", 400*time.Millisecond)
	requireOp(t, f, wire.OpOK, "lock")
	require.NoError(t, s.Abort())

	cfg.HTTPAddr = "127.0.0.1:0"
	s = startServer(t, cfg)
	defer s.Close()
	require.True(t, s.LockDelay())
	fams := scrape(t, s)
	d, ok := metricValue(fams, "netmutex_lock_delay_remaining_seconds")
	require.True(t, ok)
	assert.Greater(t, d, 0.0)
	assert.LessOrEqual(t, d, 0.5)
	code, body := httpGet(t, s, "/readyz")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "lock-delay: ")
	_, body = httpGet(t, s, "/locks")
	var v lockView
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	assert.Greater(t, v.LockDelayRemainingMS, int64(0))
	require.Eventually(t, func() bool {
		v, _ := metricValue(scrape(t, s), "netmutex_lock_delay_remaining_seconds")
		return v == 0
	}, 5*time.Second, 50*time.Millisecond)
	_, body = httpGet(t, s, "/readyz")
	assert.Equal(t, "ready\n", body)
}

// TestLockScan: the loop's snapshot of the locks keeps the first maxLockRows by key, counts
// them all, and reads a table larger than scanChunk in parts, one per serveRequests.
func TestLockScan(t *testing.T) {
	m := newMachine(machineConfig{MaxTTL: int64(time.Minute)})
	m.SetFenceLimit(1 << 40)
	out, _ := m.Apply(0, []command{{kind: kindConnect, ID: 1, NewSession: 7, Info: []byte("info")}}, nil, nil)
	require.Equal(t, wire.OpConnected, out[0].Op)
	n := scanChunk + maxLockRows
	cmds := make([]command, n)
	for i := range cmds {
		cmds[i] = command{kind: kindLock, Session: 7, ID: uint64(i + 1), TTLMs: 1000, Key: fmt.Appendf(nil, "k%06d", n-1-i)}
	}
	out, _ = m.Apply(1, cmds, nil, nil)
	require.Equal(t, n, m.Locks(), "%+v", out[0])
	s := &Server{m: m, epoch: time.Now(), reqs: make(chan *loopReq, 1)}
	reply := make(chan *locksSnap, 1)
	s.reqs <- &loopReq{locks: true, reply: reply}
	s.serveRequests()
	require.Empty(t, reply, "a table larger than scanChunk takes more than one step")
	require.NotNil(t, s.scan)
	// Between two steps the machine changes, as between two batches: released keys
	// are not seen if not reached yet, new ones may be.
	var unlocks []command
	for i := range 100 {
		unlocks = append(unlocks, command{kind: kindUnlock, Session: 7, ID: uint64(n + 1 + i), LockID: uint64(i + 1), Key: cmds[i].Key})
	}
	unlocks = append(unlocks, command{kind: kindLock, Session: 7, ID: uint64(n + 200), TTLMs: 1000, Key: []byte("new")})
	m.Apply(2, unlocks, nil, nil)
	require.Equal(t, n-99, m.Locks())
	s.serveRequests()
	require.Nil(t, s.scan)
	snap := <-reply
	require.GreaterOrEqual(t, snap.held, n-100)
	require.LessOrEqual(t, snap.held, n+1)
	seen := map[string]bool{}
	for _, r := range snap.rows {
		require.False(t, seen[r.Key], "a key once: %s", r.Key)
		seen[r.Key] = true
	}

	// Unchanged between steps: exact.
	s.reqs <- &loopReq{locks: true, reply: reply}
	s.serveRequests()
	s.serveRequests()
	snap = <-reply
	n -= 99
	require.Equal(t, n, snap.held)
	require.Equal(t, 1, snap.sessions)
	require.Len(t, snap.rows, maxLockRows)
	seen = map[string]bool{}
	for _, r := range snap.rows {
		seen[r.Key] = true
		assert.Equal(t, uint64(7), r.Session)
		assert.Equal(t, "info", r.Info)
	}
	require.False(t, seen["new"], "after every k")
	// The 100 highest k keys were unlocked (cmds[:100] locked k(n-1) down).
	for i := range maxLockRows {
		require.True(t, seen[fmt.Sprintf("k%06d", i)], "the first keys are kept: k%06d", i)
	}
}
