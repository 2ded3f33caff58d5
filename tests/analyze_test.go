package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/stretchr/testify/require"
)

// TestAnalyzeHistory is a tool, skipped unless NETMUTEX_HISTORY names a history that
// TestLinearizability saved on failure: it checks the partition of the key
// NETMUTEX_HISTORY_KEY and prints the end of porcupine's longest partial linearization
// with the operations around it, marking those it could not place (NOT).
func TestAnalyzeHistory(t *testing.T) {
	path, key := os.Getenv("NETMUTEX_HISTORY"), os.Getenv("NETMUTEX_HISTORY_KEY")
	if path == "" {
		t.Skip("NETMUTEX_HISTORY not set")
	}
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var raw []struct {
		ClientId     int
		Input        lockInput
		Call, Return int64
		Output       lockOutput
	}
	require.NoError(t, json.Unmarshal(b, &raw))
	var ops []porcupine.Operation
	for _, r := range raw {
		if r.Input.Kind.everyKey() || r.Input.Key == key {
			ops = append(ops, porcupine.Operation{ClientId: r.ClientId, Input: r.Input, Call: r.Call, Output: r.Output, Return: r.Return})
		}
	}
	res, info := porcupine.CheckOperationsVerbose(lockModel(linSlack()), ops, time.Minute)
	var best []porcupine.Operation
	for _, p := range info.PartialLinearizationsOperations() {
		for _, l := range p {
			if len(l) > len(best) {
				best = l
			}
		}
	}
	t.Logf("key %s: %v; longest partial linearization %d of %d operations", key, res, len(best), len(ops))
	placed := map[[2]int64]bool{}
	var last int64
	for _, o := range best {
		placed[[2]int64{o.Call, int64(o.ClientId)}] = true
		last = max(last, o.Call)
	}
	for _, o := range best[max(0, len(best)-15):] {
		t.Logf("LIN c%-2d %s", o.ClientId, describeOp(o))
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	for _, o := range ops {
		if o.Call > last-300e6 && o.Call < last+100e6 {
			mark := "   "
			if !placed[[2]int64{o.Call, int64(o.ClientId)}] {
				mark = "NOT"
			}
			t.Logf("%s c%-2d %s", mark, o.ClientId, describeOp(o))
		}
	}
}

func describeOp(o porcupine.Operation) string {
	in, out := o.Input.(lockInput), o.Output.(lockOutput)
	return fmt.Sprintf("[%9.3fms, %9.3fms] %-7v fence=%d ttl=%dms crash=%v -> %v %d",
		float64(in.Call)/1e6, float64(in.Ret)/1e6, in.Kind, in.Fence, in.TTL/1e6, in.CrashDuring, out.Res, out.Fence)
}
