// Returning memory after a flood: the machine rebuilds its tables once a flood left them
// far below their peak; the loop then hands the freed pages back to the OS at once,
// rather than at the runtime's leisure, so the server's RSS comes back down.

package server

import (
	"runtime/debug"
	"time"
)

// memoryReturnEvery bounds how often the loop asks the runtime to return memory: each
// time costs a full garbage collection, worth it only after a flood, never per batch.
const memoryReturnEvery = int64(10 * time.Second)

// maybeReturnMemory starts a debug.FreeOSMemory in the background when the machine
// rebuilt a table since the last time, at most once per memoryReturnEvery. Only the loop
// calls it; stop waits for the goroutine (isoWG) after the loop has ended.
func (s *Server) maybeReturnMemory(now int64) {
	n := s.m.Rebuilds()
	if n == s.rebuildsSeen || (s.memoryReturned != 0 && now-s.memoryReturned < memoryReturnEvery) {
		return
	}
	s.rebuildsSeen, s.memoryReturned = n, now
	s.isoWG.Add(1)
	go func() {
		defer s.isoWG.Done()
		debug.FreeOSMemory()
	}()
}
