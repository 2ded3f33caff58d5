// LOCKMANY: every key or none, one request, consecutive fences (docs/PROTOCOL.md).
// Part of the Machine.

package server

import (
	"bytes"

	"github.com/netmutex/netmutex/internal/wire"
)

// lockMany locks every key of c or none. Granted, key i gets fence+i (the OK carries the
// first) and each key is an ordinary lock whose lock id is c.ID. Waiting, it is queued in
// every key's queue in one step. O(keys), the key list checked in O(keys²) with at most
// wire.MaxManyKeys keys.
func (m *machine) lockMany(now int64, s *session, c *command, r *result) {
	keys, ok := m.parseKeys(c)
	if !ok || c.ID == 0 {
		r.Op, r.Code = wire.OpError, wire.CodeBadRequest
		return
	}
	if !m.checkTTL(c.TTLMs, r) {
		return
	}
	if m.answered(s, c.ID, r) {
		return
	}
	if m.waiterOf(s, c.ID) != nil {
		r.Op = wire.OpQueued // a copy of a queued LOCKMANY
		return
	}
	es := m.es[:len(keys)]
	for i, k := range keys {
		es[i] = m.locks[string(k)]
		if es[i] != nil && !m.current(es[i], s, now, r) {
			return
		}
	}
	for i, k := range keys {
		es[i] = m.locks[string(k)] // current may have expired and handed on others
	}
	if e := es[0]; e != nil && e.sess == s && e.lockID == c.ID {
		r.Fence = e.fence // a retransmission of the grant
		return
	}
	busy := false
	for _, e := range es {
		if e != nil && (e.sess != nil || e.qhead != nil) {
			busy = true
		}
	}
	if busy && !c.Wait {
		r.Op = wire.OpLocked
		s.released.add(c.ID, answeredLocked, &m.leafPool)
		return
	}
	if !m.mayHold(s, c.ID, len(keys), r) {
		return
	}
	if !busy && !m.canGrant(len(keys), now) && !c.Wait {
		r.Op, r.Code = wire.OpError, wire.CodeLockDelay
		s.released.add(c.ID, answeredDelay, &m.leafPool)
		return
	}
	if busy || !m.canGrant(len(keys), now) {
		if !m.waiterRoom(s, c.ID, es, r) {
			return
		}
		for i, k := range keys {
			if es[i] == nil {
				es[i] = m.entryFor(k)
			}
		}
		m.enqueue(now, s, c, es)
		r.Op = wire.OpQueued
		return
	}
	r.Fence = m.fence
	deadline := now + int64(c.TTLMs)*1e6
	for i, k := range keys {
		e := es[i]
		if e == nil {
			e = m.entryFor(k)
		}
		m.free--
		m.take(s, e, c.ID, deadline)
	}
}

// parseKeys reads the keys of a LOCKMANY into m.manyKeys (aliasing c.Key): false if the
// list is malformed, has an empty key or names a key twice.
func (m *machine) parseKeys(c *command) ([][]byte, bool) {
	if c.KeyCount < 1 || c.KeyCount > wire.MaxManyKeys {
		return nil, false
	}
	keys := m.manyKeys[:0]
	rest := c.Key
	for i := 0; i < int(c.KeyCount); i++ {
		if len(rest) == 0 || len(rest) < 1+int(rest[0]) || rest[0] == 0 {
			return nil, false
		}
		var k []byte
		k, rest = wire.NextKey(rest)
		for _, o := range keys {
			if bytes.Equal(o, k) {
				return nil, false
			}
		}
		keys = append(keys, k)
	}
	return keys, len(rest) == 0
}
