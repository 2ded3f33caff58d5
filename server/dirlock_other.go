//go:build !unix

// The data directory's lock, on systems without flock.

package server

import (
	"os"
	"path/filepath"
)

// BUG(netmutex): outside Unix the data directory is not locked: two servers started on
// the same DataDir would share its fence counter.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
}
