package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// The smoke tests run the real workload against an embedded server for about a second
// in all; they check that it ran and that the report is complete, never how fast.

func TestSmokeJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := mainErr([]string{"-c", "8", "-d", "1s", "-warmup", "100ms", "-json"}, &out, &errOut); err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out.String())
	}
	if len(rep.Results) != 1 {
		t.Fatalf("%d results, want 1", len(rep.Results))
	}
	r := rep.Results[0]
	if r.System != "netmutex" || r.Goroutines != 8 || r.Keys != 8 {
		t.Errorf("result describes %s, %d goroutines, %d keys; want netmutex, 8, 8", r.System, r.Goroutines, r.Keys)
	}
	if r.Pairs == 0 || r.Ops+8 < 2*r.Pairs || // counters are read one goroutine after another
		r.PairsPerSec <= 0 {
		t.Errorf("pairs %d, ops %d, pairs/s %v: want some pairs, two operations each", r.Pairs, r.Ops, r.PairsPerSec)
	}
	if r.Errors != 0 || r.Refusals != 0 {
		t.Errorf("%d errors (first: %s), %d refusals with a key per goroutine", r.Errors, r.FirstErr, r.Refusals)
	}
	if !(r.Pair.P50 > 0 && r.Pair.P50 <= r.Pair.P90 && r.Pair.P90 <= r.Pair.P99 && r.Pair.P99 <= r.Pair.P999 && r.Pair.P999 <= r.Pair.Max) {
		t.Errorf("latency percentiles out of order: %+v", r.Pair)
	}
	if r.AllocsPerOp < 0 || r.CPUPerMop <= 0 {
		t.Errorf("allocs/op %v, CPU s/Mop %v", r.AllocsPerOp, r.CPUPerMop)
	}
	tr := r.Transport
	if tr == nil || !tr.HasServer || tr.ClientFramesPerDatagramOut < 1 || tr.ServerDatagramsPerRecvCall < 1 {
		t.Errorf("transport figures missing: %+v", tr)
	}
	if rep.Machine.NumCPU < 1 || rep.Machine.Go == "" {
		t.Errorf("machine not described: %+v", rep.Machine)
	}
	if !strings.Contains(errOut.String(), "machine: nproc") {
		t.Errorf("no machine line on stderr:\n%s", errOut.String())
	}
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
			[]string{"acquisitions/s", "refusals/s", "wait for the key p50"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			args := append(c.args, "-d", "300ms", "-warmup", "50ms")
			if err := mainErr(args, &out, &errOut); err != nil {
				t.Fatalf("bench: %v\n%s", err, errOut.String())
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("no %q in the table:\n%s", w, out.String())
				}
			}
			if !regexp.MustCompile(`(?m)^  errors +0$`).MatchString(out.String()) {
				t.Errorf("errors reported:\n%s", out.String())
			}
		})
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-c", "0"}, {"-d", "0"}, {"-conns", "0"}, {"extra"}} {
		var out, errOut bytes.Buffer
		if err := mainErr(args, &out, &errOut); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}
