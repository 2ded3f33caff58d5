// The store: the state file of the data directory (boot count, fence high-water mark,
// clean-stop flag), written atomically and durably.

package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
)

// The state file: everything the server must not forget across restarts, 24 bytes.
//
//	0  4  magic "NMXS"
//	4  1  format version (1)
//	5  1  flags: bit 0 clean stop, bit 1 locks were held at that stop
//	6  2  reserved, 0
//	8  4  boot count
//	12 8  fence high-water mark: no fence at or above it has been handed out
//	20 4  CRC32-C of bytes [0, 20)
const (
	stateFile    = "state"
	stateTmp     = "state.tmp"
	stateMagic   = "NMXS"
	stateVersion = 1
	stateSize    = 24

	flagClean     = 1 << 0
	flagLocksHeld = 1 << 1
)

// Store errors.
var (
	ErrCorruptState = errors.New("server: corrupt state file")
	ErrStateVersion = errors.New("server: state file of an unknown version")
	ErrDataDirInUse = errors.New("server: data directory in use by another server")
)

type state struct {
	boot      uint32
	fenceHW   uint64
	clean     bool
	locksHeld bool
}

func (s *state) encode() []byte {
	b := make([]byte, 0, stateSize)
	b = append(b, stateMagic...)
	var flags byte
	if s.clean {
		flags |= flagClean
	}
	if s.locksHeld {
		flags |= flagLocksHeld
	}
	b = append(b, stateVersion, flags, 0, 0)
	b = binary.BigEndian.AppendUint32(b, s.boot)
	b = binary.BigEndian.AppendUint64(b, s.fenceHW)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeState(b []byte) (state, error) {
	if len(b) != stateSize || string(b[:4]) != stateMagic {
		return state{}, ErrCorruptState
	}
	if crc32.Checksum(b[:20], castagnoli) != binary.BigEndian.Uint32(b[20:]) {
		return state{}, ErrCorruptState
	}
	if b[4] != stateVersion {
		return state{}, ErrStateVersion
	}
	if b[5]&^(flagClean|flagLocksHeld) != 0 || b[6] != 0 || b[7] != 0 {
		return state{}, ErrCorruptState
	}
	return state{
		boot:      binary.BigEndian.Uint32(b[8:]),
		fenceHW:   binary.BigEndian.Uint64(b[12:]),
		clean:     b[5]&flagClean != 0,
		locksHeld: b[5]&flagLocksHeld != 0,
	}, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// store keeps the state file of one data directory. Only the loop (and Close, after the
// loop ended) use it.
type store struct {
	dir  string
	lock *os.File // held for the store's life
	st   state
	// lockDelay: the last stop may have lost locks (unclean, or clean with locks held).
	lockDelay bool
}

// openStore reads the data directory, creating it if needed, and at once records this
// start (boot count + 1, not clean) durably, before anything is served.
func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("server: data directory: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("server: %s: %w", dir, err)
	}
	s := &store{dir: dir, lock: lock}
	if err := s.load(); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// load reads the previous state and records this start.
func (s *store) load() error {
	dir := s.dir
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.st = state{boot: 1, fenceHW: 1}
	case err != nil:
		return fmt.Errorf("server: read state: %w", err)
	default:
		prev, err := decodeState(b)
		if err != nil {
			return fmt.Errorf("%w: %s", err, filepath.Join(dir, stateFile))
		}
		s.lockDelay = !prev.clean || prev.locksHeld
		// Fences of an unfinished reservation are skipped, never reused.
		s.st = state{boot: prev.boot + 1, fenceHW: prev.fenceHW}
		if s.st.fenceHW == 0 {
			s.st.fenceHW = 1
		}
	}
	return s.write()
}

// close releases the data directory.
func (s *store) close() error { return s.lock.Close() }

// firstFence is the first fence this boot may hand out.
func (s *store) firstFence() uint64 { return s.st.fenceHW }

// reserve makes fences below end usable: it returns once the new high-water mark is
// durable.
func (s *store) reserve(end uint64) error {
	if end <= s.st.fenceHW {
		return nil
	}
	old := s.st.fenceHW
	s.st.fenceHW = end
	if err := s.write(); err != nil {
		s.st.fenceHW = old
		return err
	}
	return nil
}

// markClean records a clean stop.
func (s *store) markClean(locksHeld bool) error {
	s.st.clean, s.st.locksHeld = true, locksHeld
	return s.write()
}

// write replaces the state file atomically and durably: temp file, fsync, rename, fsync
// of the directory.
func (s *store) write() error {
	tmp := filepath.Join(s.dir, stateTmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("server: write state: %w", err)
	}
	_, err = f.Write(s.st.encode())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.dir, stateFile))
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		return fmt.Errorf("server: write state: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
