package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseVs(t *testing.T) {
	got, err := parseVs("redis, etcd,rueidis")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"redis-rueidis", "redis-goredis", "etcd"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("parseVs = %q, want %q", got, want)
	}
	if _, err := parseVs("redis,zookeeper"); err == nil {
		t.Fatal("unknown system accepted")
	}
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
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut.String())
	}
	t.Logf("comparison took %v", time.Since(start).Round(time.Millisecond))
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out.String())
	}
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
			if r.Pairs == 0 || r.Errors != 0 {
				t.Errorf("%s: %d pairs, %d errors (first: %s)", name, r.Pairs, r.Errors, r.FirstErr)
			}
		case strings.HasPrefix(name, "redis") && redisErr != nil:
			if !strings.Contains(skipped[name], "redis-server not found") {
				t.Errorf("%s neither ran nor was skipped for the missing redis-server: %q", name, skipped[name])
			}
		default:
			t.Errorf("%s did not run: %s", name, skipped[name])
		}
	}
	if redisErr != nil {
		t.Logf("redis-server not installed: the Redis clients were skipped (bench/install-redis.sh installs it)")
	}
	if want := len(rep.Results) * len(sweepGoroutines); len(rep.Sweep) != want {
		t.Errorf("%d sweep points, want %d", len(rep.Sweep), want)
	}
	if fi, err := os.Stat(png); err != nil || fi.Size() < 10000 {
		t.Errorf("chart not written: %v", err)
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
		if err := writePlot(f, rep); err != nil {
			t.Fatalf("%s: %v", ext, err)
		}
		if fi, err := os.Stat(f); err != nil || fi.Size() < 1000 {
			t.Fatalf("%s chart not written: %v", ext, err)
		}
	}
	if err := writePlot(filepath.Join(t.TempDir(), "x.png"), &report{}); err == nil {
		t.Fatal("a chart without sweep results was written")
	}
}
