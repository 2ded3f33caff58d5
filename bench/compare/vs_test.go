package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netmutex/netmutex/bench/load"
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
		"-sweep-d", "100ms", "-plot", png, "-json"}, &out, &errOut)
	require.NoError(t, err, "bench; stderr:\n%s", errOut.String())
	t.Logf("comparison took %v", time.Since(start).Round(time.Millisecond))
	var rep load.Report
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), "stdout is not JSON:\n%s", out.String())
	ran := map[string]*load.Result{}
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
		t.Logf("redis-server not installed: the Redis clients were skipped (bench/compare/install-redis.sh installs it)")
	}
	assert.Len(t, rep.Sweep, len(rep.Results)*len(sweepGoroutines), "sweep points: one per system and goroutine count")
	if fi, err := os.Stat(png); assert.NoError(t, err, "chart not written") {
		assert.GreaterOrEqual(t, fi.Size(), int64(10000), "chart size")
	}
}

// Installing redis-server is opt-in: by default a missing redis-server skips the Redis
// peers with a note that says how to get them, and nothing is run.
func TestInstallRedisOptIn(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	assert.False(t, o.installRedis, "-install-redis is on by default")
	assert.Equal(t, []string{"redis-rueidis", "redis-goredis", "etcd"}, o.vs, "-vs default")

	t.Setenv("PATH", t.TempDir()) // no redis-server, and no apt-get or sudo either
	var log bytes.Buffer
	_, err = findRedis(false, &log)
	require.Error(t, err, "redis-server found on an empty PATH")
	assert.Contains(t, err.Error(), "redis-server not found")
	for _, want := range []string{"skipped", "install-redis.sh", "-install-redis"} {
		assert.Contains(t, log.String(), want, "the note on a missing redis-server")
	}

	// With -install-redis it says what it will run before running it. Neither bash nor
	// apt-get is on this PATH, so nothing is installed here.
	log.Reset()
	_, err = findRedis(true, &log)
	require.Error(t, err, "redis-server installed on an empty PATH")
	for _, want := range []string{"-install-redis is set", "install-redis.sh", "apt-get install"} {
		assert.Contains(t, log.String(), want, "what -install-redis says before it runs the script")
	}

	// The comparison goes on without the Redis peers, each reported as skipped.
	var out, errOut bytes.Buffer
	err = mainErr([]string{"-vs", "redis", "-c", "2", "-d", "100ms", "-warmup", "0s", "-json"}, &out, &errOut)
	require.NoError(t, err, "stderr:\n%s", errOut.String())
	var rep load.Report
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), "stdout is not JSON:\n%s", out.String())
	require.Len(t, rep.Results, 1, "netmutex alone ran")
	assert.Equal(t, "netmutex", rep.Results[0].System)
	require.Len(t, rep.Skipped, 2, "skipped: %+v", rep.Skipped)
	for _, s := range rep.Skipped {
		assert.Contains(t, s.Reason, "-install-redis", "%s: the reason says how to get it", s.System)
	}
	assert.Contains(t, errOut.String(), "redis-server not found: the Redis peers are skipped", "the note")
}

func TestPlotFormats(t *testing.T) {
	rep := &load.Report{Machine: load.DescribeMachine()}
	for i, name := range []string{"netmutex", "redis-rueidis", "etcd"} {
		for _, n := range sweepGoroutines {
			h := new(load.Hist)
			for j := 1; j <= 1000; j++ {
				h.Record(time.Duration(j*(i+1)) * time.Microsecond)
			}
			rep.Sweep = append(rep.Sweep, &load.Result{System: name, Goroutines: n, PairsPerSec: float64(n*1000) / float64(i+1), PairHist: h})
		}
	}
	for _, ext := range []string{".png", ".svg"} {
		f := filepath.Join(t.TempDir(), "chart"+ext)
		require.NoError(t, writePlot(f, rep), ext)
		fi, err := os.Stat(f)
		require.NoError(t, err, "%s chart not written", ext)
		require.GreaterOrEqual(t, fi.Size(), int64(1000), "%s chart size", ext)
	}
	assert.Error(t, writePlot(filepath.Join(t.TempDir(), "x.png"), &load.Report{}), "a chart without sweep results was written")
}
