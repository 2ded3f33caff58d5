//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package store

import "sync"

// lockFile, without flock, serialises Puts within this process only: on this system
// Dir is safe for one process's workers, not for several processes.
var fileLocks sync.Map // path -> *sync.Mutex

func lockFile(path string) (unlock func(), err error) {
	m, _ := fileLocks.LoadOrStore(path, new(sync.Mutex))
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock, nil
}
