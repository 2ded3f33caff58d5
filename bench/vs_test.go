package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseVs(t *testing.T) {
	got, err := parseVs("redis, etcd,rueidis")
	require.NoError(t, err)
	assert.Equal(t, []string{"redis-rueidis", "redis-goredis", "etcd"}, got)
	_, err = parseVs("redis,zookeeper")
	assert.Error(t, err, "unknown system accepted")
}

// TestCompare runs the whole comparison for real, briefly: netmutex, each Redis client
// against a redis-server this test starts (skipped, as the bench itself skips it, when
// redis-server is not installed: the test never installs it), and an embedded etcd;
// then the sweep and the chart. It checks that every system ran or was reported as
// skipped, never how fast anything was.
func TestCompare(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts an embedded etcd and a redis-server (about 3s)")
	}
	// Two sweep points are enough to check the sweep and the chart.
	defer func(s []int) { sweepGoroutines = s }(sweepGoroutines)
	sweepGoroutines = []int{1, 4}
	_, redisErr := exec.LookPath("redis-server")
	dir := t.TempDir()
	png := filepath.Join(dir, "chart.png")
	var out, errOut bytes.Buffer
	start := time.Now()
	err := mainErr([]string{"-vs", "redis,etcd", "-c", "4", "-d", "200ms", "-warmup", "50ms",
		"-sweep-d", "100ms", "-plot", png, "-install-redis=false", "-json"}, &out, &errOut)
	require.NoError(t, err, "bench; stderr:\n%s", errOut.String())
	t.Logf("comparison took %v", time.Since(start).Round(time.Millisecond))
	var rep report
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), "stdout is not JSON:\n%s", out.String())
	ran := map[string]*result{}
	for _, r := range rep.Results {
		ran[r.System] = r
	}
	skipped := map[string]string{}
	for _, s := range rep.Skipped {
		skipped[s.System] = s.Reason
	}
	for _, name := range []string{"netmutex", "redis-rueidis", "redis-goredis", "etcd"} {
		r := ran[name]
		switch {
		case r != nil:
			assert.NotZero(t, r.Pairs, "%s: pairs", name)
			assert.Zero(t, r.Errors, "%s: errors (first: %s)", name, r.FirstErr)
		case strings.HasPrefix(name, "redis") && redisErr != nil:
			assert.Contains(t, skipped[name], "redis-server not found", "%s neither ran nor was skipped for the missing redis-server", name)
		default:
			t.Errorf("%s did not run: %s", name, skipped[name])
		}
	}
	if redisErr != nil {
		t.Logf("redis-server not installed: the Redis clients were skipped (bench/install-redis.sh installs it)")
	}
	assert.Len(t, rep.Sweep, len(rep.Results)*len(sweepGoroutines), "sweep points: one per system and goroutine count")
	if fi, err := os.Stat(png); assert.NoError(t, err, "chart not written") {
		assert.GreaterOrEqual(t, fi.Size(), int64(10000), "chart size")
	}
}

func TestPlotFormats(t *testing.T) {
	rep := &report{Machine: describeMachine()}
	for i, name := range []string{"netmutex", "redis-rueidis", "etcd"} {
		for _, n := range sweepGoroutines {
			h := new(hist)
			for j := 1; j <= 1000; j++ {
				h.record(time.Duration(j*(i+1)) * time.Microsecond)
			}
			rep.Sweep = append(rep.Sweep, &result{System: name, Goroutines: n, PairsPerSec: float64(n*1000) / float64(i+1), pairHist: h})
		}
	}
	for _, ext := range []string{".png", ".svg"} {
		f := filepath.Join(t.TempDir(), "chart"+ext)
		require.NoError(t, writePlot(f, rep), ext)
		fi, err := os.Stat(f)
		require.NoError(t, err, "%s chart not written", ext)
		require.GreaterOrEqual(t, fi.Size(), int64(1000), "%s chart size", ext)
	}
	assert.Error(t, writePlot(filepath.Join(t.TempDir(), "x.png"), &report{}), "a chart without sweep results was written")
}
