// The store: the state file of the data directory (boot count, fence high-water mark,
// clean-stop flag, the longest TTL that may still be held), written atomically and
// durably.

package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// The state file: everything the server must not forget across restarts, 32 bytes.
//
//	0  4  magic "NMXS"
//	4  1  format version (2)
//	5  1  flags: bit 0 clean stop, bit 1 locks were held at that stop
//	6  2  reserved, 0
//	8  4  boot count (for logs: session ids are random)
//	12 8  fence high-water mark: no fence at or above it has been handed out
//	20 8  max TTL, nanoseconds: no lock granted by this or an earlier boot that a client
//	      may still believe it holds has a longer TTL (the length of the lock-delay)
//	28 4  CRC32-C of bytes [0, 28)
//
// Version 1 (24 bytes, no max TTL, CRC at 20) is still read: its max TTL counts as 0,
// so the first start after the upgrade delays for the configured MaxTTL only.
const (
	stateFile    = "state"
	stateTmp     = "state.tmp"
	lockFile     = "lock"
	stateMagic   = "NMXS"
	stateVersion = 2
	stateSize    = 32
	stateSizeV1  = 24

	flagClean     = 1 << 0
	flagLocksHeld = 1 << 1
)

// Store errors.
var (
	ErrCorruptState = errors.New("server: corrupt state file")
	ErrStateVersion = errors.New("server: state file of an unknown version")
	ErrDataDirInUse = errors.New("server: data directory in use by another server")
	// ErrStateLost: the data directory has its lock file but no state file, so the state
	// of an earlier server was lost (deleted, or a crash during the very first start).
	// Starting would forget the fence high-water mark and the lock-delay. To start anyway,
	// delete the lock file too: the directory is then new, its fences start above the
	// wall clock in nanoseconds and there is no lock-delay (see docs/DURABILITY.md).
	ErrStateLost = errors.New("server: state file missing but the lock file exists: state lost")
)

type state struct {
	boot      uint32
	fenceHW   uint64
	clean     bool
	locksHeld bool
	maxTTL    time.Duration
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
	b = binary.BigEndian.AppendUint64(b, uint64(max(s.maxTTL, 0)))
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeState(b []byte) (state, error) {
	if len(b) < 8 || string(b[:4]) != stateMagic {
		return state{}, ErrCorruptState
	}
	size := stateSize
	switch b[4] {
	case 1:
		size = stateSizeV1
	case stateVersion:
	default:
		if len(b) >= 24 {
			return state{}, ErrStateVersion
		}
		return state{}, ErrCorruptState
	}
	if len(b) != size || crc32.Checksum(b[:size-4], castagnoli) != binary.BigEndian.Uint32(b[size-4:]) {
		return state{}, ErrCorruptState
	}
	if b[5]&^(flagClean|flagLocksHeld) != 0 || b[6] != 0 || b[7] != 0 {
		return state{}, ErrCorruptState
	}
	st := state{
		boot:      binary.BigEndian.Uint32(b[8:]),
		fenceHW:   binary.BigEndian.Uint64(b[12:]),
		clean:     b[5]&flagClean != 0,
		locksHeld: b[5]&flagLocksHeld != 0,
	}
	if size == stateSize {
		ttl := binary.BigEndian.Uint64(b[20:])
		if ttl > 1<<62 {
			return state{}, ErrCorruptState
		}
		st.maxTTL = time.Duration(ttl)
	}
	return st, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// store keeps the state file of one data directory. Only the loop (and New before it,
// and Close after it) use it; a background reservation has it while s.reserving.
type store struct {
	dir  string
	lock *os.File // held for the store's life
	st   state
	// lockDelay: the last stop may have lost locks (unclean, or clean with locks held).
	// delay is then how long this start refuses grants: the longest TTL any earlier boot
	// whose locks may still be believed held served with, or today's MaxTTL if longer.
	lockDelay bool
	delay     time.Duration
	// fresh: the directory had neither state nor lock file. Otherwise prevClean and
	// prevHeld tell how the previous boot stopped (for the start's log).
	fresh     bool
	prevClean bool
	prevHeld  bool
	// maxTTL is this boot's MaxTTL; settled: st.maxTTL has come down to it, once the
	// lock-delay, counted from opened, has run out (see settle).
	maxTTL  time.Duration
	settled bool
	opened  time.Time

	// writeFile makes b the state file, durably; tests replace it to fail writes.
	writeFile func(dir string, b []byte) error
	// block is how many fences one reservation reserves ahead (fenceBlock; tests lower it).
	block uint64
	// Reservation health, owned by the loop (see noteReservation): failing since the
	// last write failed; no new write is tried before retryAt.
	failing bool
	retryAt time.Time
	// fsyncs counts the fsyncs of successful writes (the file and its directory: two
	// each), writeErrors the writes that failed; read by the metrics at any time.
	fsyncs      atomic.Uint64
	writeErrors atomic.Uint64
}

// openStore reads the data directory, creating it if needed, and at once records this
// start durably (boot count + 1, not clean, the longest TTL to delay for, a fence
// high-water mark at or above the wall clock), before anything is served. maxTTL is the
// MaxTTL this boot serves with.
func openStore(dir string, maxTTL time.Duration) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("server: data directory: %w", err)
	}
	_, lerr := os.Lstat(filepath.Join(dir, lockFile))
	hadLock := lerr == nil
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("server: %s: %w", dir, err)
	}
	s := &store{dir: dir, lock: lock, maxTTL: maxTTL, writeFile: writeStateFile, block: fenceBlock}
	s.opened = time.Now()
	if err := s.load(hadLock, s.opened); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// wallFence is the lowest fence a start at wall may hand out: the wall clock in
// nanoseconds. Any earlier incarnation, on any machine whose clock was not ahead of
// this one's, that started from the wall clock too and handed out fewer than one fence
// per nanosecond since, stayed below it.
func wallFence(wall time.Time) uint64 {
	return uint64(max(wall.UnixNano(), 1))
}

// load reads the previous state and records this start.
func (s *store) load(hadLock bool, wall time.Time) error {
	p := filepath.Join(s.dir, stateFile)
	b, err := os.ReadFile(p)
	switch {
	case errors.Is(err, fs.ErrNotExist) && hadLock:
		return fmt.Errorf("%w: %s is missing; to start with a new state (fences from the wall clock, no lock-delay), delete %s too",
			ErrStateLost, p, filepath.Join(s.dir, lockFile))
	case errors.Is(err, fs.ErrNotExist):
		// A new directory: nothing to delay for, and fences above anything an earlier
		// incarnation with another (lost) directory can have handed out.
		s.fresh = true
		s.st = state{boot: 1, fenceHW: wallFence(wall), maxTTL: s.maxTTL}
	case err != nil:
		return fmt.Errorf("server: read state: %w", err)
	default:
		prev, err := decodeState(b)
		if err != nil {
			return fmt.Errorf("%w: %s", err, p)
		}
		s.prevClean, s.prevHeld = prev.clean, prev.locksHeld
		s.lockDelay = !prev.clean || prev.locksHeld
		// Fences of an unfinished reservation are skipped, never reused; the wall clock
		// keeps a restored old state file from going backwards.
		s.st = state{boot: prev.boot + 1, fenceHW: max(prev.fenceHW, wallFence(wall)), maxTTL: s.maxTTL}
		if s.lockDelay {
			s.delay = max(prev.maxTTL, s.maxTTL)
			s.st.maxTTL = s.delay // until the delay has run out
		}
	}
	s.settled = s.st.maxTTL == s.maxTTL
	return s.write()
}

// close releases the data directory.
func (s *store) close() error { return s.lock.Close() }

// firstFence is the first fence this boot may hand out.
func (s *store) firstFence() uint64 { return s.st.fenceHW }

// settle lowers the recorded max TTL to this boot's MaxTTL once the lock-delay has run
// out, counted from when the store was opened (before the machine's clock started, so
// never later than the machine's own delay): every lock of an earlier boot, granted
// before this start with at most the recorded TTL, has expired by then, and this boot
// grants none longer than its MaxTTL. The next write (a fence block, the clean stop)
// records it, so a -max-ttl lowered once does not lengthen every later lock-delay.
func (s *store) settle() {
	if !s.settled && time.Since(s.opened) >= s.delay {
		s.st.maxTTL, s.settled = s.maxTTL, true
	}
}

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
	s.settle()
	s.st.clean, s.st.locksHeld = true, locksHeld
	return s.write()
}

func (s *store) write() error {
	if err := s.writeFile(s.dir, s.st.encode()); err != nil {
		s.writeErrors.Add(1)
		return fmt.Errorf("server: write state: %w", err)
	}
	s.fsyncs.Add(2) // writeStateFile: the file, then its directory
	return nil
}

// writeStateFile replaces the state file atomically and durably: temp file, fsync,
// rename, fsync of the directory.
func writeStateFile(dir string, b []byte) error {
	tmp := filepath.Join(dir, stateTmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, stateFile))
	}
	if err == nil {
		err = syncDir(dir)
	}
	return err
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

// LockDelayLength is how long this start refuses grants (LOCK_DELAY) after New: 0
// without a lock-delay, else the longest TTL recorded in the data directory for the
// boots whose locks may still be believed held, or MaxTTL if longer.
func (s *Server) LockDelayLength() time.Duration { return s.store.delay }
