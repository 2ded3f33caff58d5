package main

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/netmutex/netmutex/bench/load"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The smoke tests run the real workload against an embedded server for about a second
// in all; they check that it ran and that the report is complete, never how fast.

func TestSmokeJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	err := mainErr([]string{"-c", "8", "-d", "1s", "-warmup", "100ms", "-json"}, &out, &errOut)
	require.NoError(t, err, "bench; stderr:\n%s", errOut.String())
	var rep load.Report
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), "stdout is not JSON:\n%s", out.String())
	require.Len(t, rep.Results, 1)
	r := rep.Results[0]
	assert.Equal(t, "netmutex", r.System)
	assert.Equal(t, 8, r.Goroutines)
	assert.Equal(t, 8, r.Keys)
	assert.NotZero(t, r.Pairs, "pairs")
	// Two operations a pair; the counters are read one goroutine after another.
	assert.GreaterOrEqual(t, r.Ops+8, 2*r.Pairs, "ops+8 against twice the %d pairs", r.Pairs)
	assert.Greater(t, r.PairsPerSec, 0.0, "pairs/s")
	assert.Zero(t, r.Errors, "errors (first: %s)", r.FirstErr)
	assert.Zero(t, r.Refusals, "refusals with a key per goroutine")
	// Written out rather than with IsNonDecreasing, whose float comparison lets NaN through.
	assert.True(t, r.Pair.P50 > 0 && r.Pair.P50 <= r.Pair.P90 && r.Pair.P90 <= r.Pair.P99 && r.Pair.P99 <= r.Pair.P999 && r.Pair.P999 <= r.Pair.Max,
		"latency percentiles out of order: %+v", r.Pair)
	assert.False(t, r.AllocsPerOp < 0, "allocs/op %v", r.AllocsPerOp)
	assert.Greater(t, r.CPUPerMop, 0.0, "CPU s/Mop")
	if tr := r.Transport; assert.NotNil(t, tr, "transport figures missing") {
		assert.True(t, tr.HasServer, "transport figures without the server's: %+v", tr)
		assert.GreaterOrEqual(t, tr.ClientFramesPerDatagramOut, 1.0, "client frames/datagram out")
		assert.GreaterOrEqual(t, tr.ServerDatagramsPerRecvCall, 1.0, "server datagrams/recv call")
	}
	assert.GreaterOrEqual(t, rep.Machine.NumCPU, 1, "machine not described: %+v", rep.Machine)
	assert.NotEmpty(t, rep.Machine.Go, "machine not described: %+v", rep.Machine)
	assert.Contains(t, errOut.String(), "machine: nproc", "no machine line on stderr")
}

func TestSmokeTable(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"uncontended", []string{"-c", "4", "-keys", "16"},
			[]string{"lock operations/s", "lock+unlock pairs/s", "pair latency p50", "p99.9", "allocations/operation", "CPU s/million operations", "client frames/datagram", "server datagrams/syscall"}},
		{"contended", []string{"-c", "4", "-contended"},
			[]string{"handoffs/s", "fairness", "wait for the key p50"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			args := append(c.args, "-d", "300ms", "-warmup", "50ms")
			err := mainErr(args, &out, &errOut)
			require.NoError(t, err, "bench; stderr:\n%s", errOut.String())
			for _, w := range c.want {
				assert.Contains(t, out.String(), w, "a row of the table")
			}
			assert.Regexp(t, `(?m)^  errors +0$`, out.String(), "errors reported")
		})
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-c", "0"}, {"-d", "0"}, {"-conns", "0"}, {"extra"}, {"-sealed", "-key-file", "k"}} {
		var out, errOut bytes.Buffer
		assert.Error(t, mainErr(args, &out, &errOut), "%q accepted", args)
	}
}

// The comparison's flags moved to bench/compare: using one here says where it went.
func TestMovedFlags(t *testing.T) {
	for _, args := range [][]string{{"-vs", "redis"}, {"--vs=etcd"}, {"-c", "4", "-plot", "x.png"}, {"-install-redis"}} {
		var out, errOut bytes.Buffer
		err := mainErr(args, &out, &errOut)
		if assert.Error(t, err, "%q accepted", args) {
			assert.Contains(t, err.Error(), "go run ./bench/compare", "%q: the error says where the flag went", args)
		}
	}
}

// -cluster runs the job against a cluster of netmutexd processes, one netmutexd and the
// embedded server, in that order; it builds netmutexd first (about 2s in all once the
// build is cached, so -short runs it too).
func TestSmokeCluster(t *testing.T) {
	var out, errOut bytes.Buffer
	err := mainErr([]string{"-cluster", "3", "-c", "8", "-d", "300ms", "-warmup", "50ms", "-json"}, &out, &errOut)
	require.NoError(t, err, "bench; stderr:\n%s", errOut.String())
	var rep load.Report
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), "stdout is not JSON:\n%s", out.String())
	require.Len(t, rep.Results, 3)
	for i, name := range []string{"netmutex-raft3", "netmutexd", "netmutex"} {
		r := rep.Results[i]
		assert.Equal(t, name, r.System)
		assert.NotZero(t, r.Pairs, "%s: pairs", name)
		assert.Zero(t, r.Errors, "%s: errors (first: %s)", name, r.FirstErr)
	}
	assert.Contains(t, rep.Results[0].Note, "3 netmutexd processes replicated with Raft")

	for _, args := range [][]string{{"-cluster", "1"}, {"-cluster", "-1"}, {"-cluster", "3", "-addr", "127.0.0.1:1"}} {
		assert.Error(t, mainErr(args, &out, &errOut), "%q accepted", args)
	}
}
