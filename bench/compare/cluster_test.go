package main

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"

	"github.com/netmutex/netmutex/bench/load"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClusterFlags(t *testing.T) {
	o, err := parseFlags([]string{"-cluster", "3"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"netmutex-raft3", "netmutexd", "etcd"}, o.systems(), "-cluster alone: against etcd")
	o, err = parseFlags([]string{"-cluster", "5", "-vs", "rueidis"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"netmutex-raft5", "netmutexd", "redis-rueidis"}, o.systems(), "-cluster with -vs")
	o, err = parseFlags(nil, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []string{"netmutex", "redis-rueidis", "redis-goredis", "etcd"}, o.systems(), "without -cluster")
	for _, args := range [][]string{{"-cluster", "1"}, {"-cluster", "-2"}, {"-cluster", "3", "-addr", "127.0.0.1:1"}} {
		_, err := parseFlags(args, io.Discard)
		assert.Error(t, err, "%q accepted", args)
	}
}

// TestCompareCluster runs -cluster 3 for real, briefly: a cluster of three netmutexd
// processes, one netmutexd and an embedded etcd, in one table. It checks that each ran,
// never how fast.
func TestCompareCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds netmutexd, starts four processes and an embedded etcd (about 4s)")
	}
	var out, errOut bytes.Buffer
	err := mainErr([]string{"-cluster", "3", "-c", "4", "-d", "200ms", "-warmup", "50ms", "-json"}, &out, &errOut)
	require.NoError(t, err, "stderr:\n%s", errOut.String())
	var rep load.Report
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), "stdout is not JSON:\n%s", out.String())
	require.Len(t, rep.Results, 3, "skipped: %+v", rep.Skipped)
	for i, name := range []string{"netmutex-raft3", "netmutexd", "etcd"} {
		r := rep.Results[i]
		assert.Equal(t, name, r.System)
		assert.NotZero(t, r.Pairs, "%s: pairs", name)
		assert.Zero(t, r.Errors, "%s: errors (first: %s)", name, r.FirstErr)
	}

	out.Reset()
	require.NoError(t, mainErr([]string{"-cluster", "3", "-vs", "", "-c", "2", "-d", "100ms", "-warmup", "0s"}, &out, &errOut), "stderr:\n%s", errOut.String())
	assert.Regexp(t, `(?m)^netmutex-raft3 .*1\.00×$`, out.String(), "the cluster's row is the reference")
	assert.Regexp(t, `(?m)^netmutexd `, out.String(), "one netmutexd's row")
}
