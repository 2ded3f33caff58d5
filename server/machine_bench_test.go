package server

import (
	"strconv"
	"testing"
)

// BenchmarkMachineLockUnlock measures Apply alone (no parse, encode or syscalls) on the
// hot path: batches of LOCK and UNLOCK of distinct keys by a few sessions.
func BenchmarkMachineLockUnlock(b *testing.B) {
	m := newMachine(machineConfig{MaxTTL: 60e9})
	m.SetFenceLimit(1 << 62)
	const sessions, perBatch = 4, 256
	var cmds []command
	for i := 0; i < sessions; i++ {
		cmds = append(cmds, command{kind: kindConnect, ID: uint64(i + 1), NewSession: uint64(i + 1)})
	}
	out, _ := m.Apply(0, cmds, nil, nil)
	keys := make([][]byte, perBatch)
	for i := range keys {
		keys[i] = []byte("key-" + strconv.Itoa(i))
	}
	cmds = make([]command, 2*perBatch)
	id := uint64(1)
	now := int64(1)
	b.ReportAllocs()
	for b.Loop() {
		for i := 0; i < perBatch; i++ {
			s := uint64(i%sessions + 1)
			cmds[i] = command{kind: kindLock, Session: s, Floor: id, ID: id + uint64(i), TTLMs: 10000, Key: keys[i]}
			cmds[perBatch+i] = command{kind: kindUnlock, Session: s, Floor: id, ID: id + uint64(perBatch+i), LockID: id + uint64(i), Key: keys[i]}
		}
		id += 2 * perBatch
		now++
		out, _ = m.Apply(now, cmds, out[:0], nil)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*2*perBatch), "ns/request")
}
