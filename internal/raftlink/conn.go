// A keyed connection: records after the handshake.

package raftlink

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

const (
	lenSize = 4
	tagSize = chacha20poly1305.Overhead
	// maxPlain bounds a record: what a peer can make us buffer before its record
	// authenticates. 64 KiB keeps raft's 256 KiB flushes to four writes.
	maxPlain  = 64 << 10
	maxSealed = maxPlain + tagSize
)

// Conn is one keyed connection. Read and Write may run concurrently with each other;
// each is serialized with itself. The nonce of a record is its number in its direction
// (4 zero bytes, then the number as a big-endian uint64) and is never sent; the length
// field is the additional data.
type Conn struct {
	tcp    net.Conn
	keys   *keys
	dialer bool

	hsMu   sync.Mutex
	hsDone atomic.Bool
	hsErr  error // written before hsDone is set

	dlMu     sync.Mutex
	rdl, wdl time.Time // the caller's deadlines, applied once the handshake is over

	errMu sync.Mutex
	err   error // the first error that ended the connection

	rmu    sync.Mutex
	recv   cipher.AEAD
	rnonce [chacha20poly1305.NonceSize]byte
	rseq   uint64
	rbuf   []byte // raw bytes from the peer: rbuf[rstart:rend] not yet opened
	rstart int
	rend   int
	plain  []byte // opened bytes not yet returned, inside rbuf

	wmu    sync.Mutex
	send   cipher.AEAD
	wnonce [chacha20poly1305.NonceSize]byte
	wseq   uint64
	wbuf   []byte
}

var _ net.Conn = (*Conn)(nil)

func newConn(tcp net.Conn, k *keys, dialer bool) *Conn {
	return &Conn{tcp: tcp, keys: k, dialer: dialer}
}

func (c *Conn) initRecords(recv, send cipher.AEAD) {
	c.recv, c.send = recv, send
	c.rbuf = make([]byte, lenSize+maxSealed)
	c.wbuf = make([]byte, lenSize+maxSealed)
}

// ensureHandshake runs the handshake once, on the accepting side's first Read or Write.
func (c *Conn) ensureHandshake() error {
	if c.hsDone.Load() {
		return c.hsErr
	}
	return c.handshake(time.Now().Add(HandshakeTimeout))
}

// handshake runs the handshake once, by deadline or the caller's earlier deadlines.
func (c *Conn) handshake(deadline time.Time) error {
	c.hsMu.Lock()
	defer c.hsMu.Unlock()
	if c.hsDone.Load() {
		return c.hsErr
	}
	c.dlMu.Lock()
	rd, wd := earlier(deadline, c.rdl), earlier(deadline, c.wdl)
	c.dlMu.Unlock()
	c.tcp.SetReadDeadline(rd)
	c.tcp.SetWriteDeadline(wd)
	var err error
	if c.dialer {
		err = c.dialerHandshake()
	} else {
		err = c.acceptorHandshake()
	}
	if err != nil {
		c.fail(err)
	}
	c.dlMu.Lock()
	if err == nil {
		c.tcp.SetReadDeadline(c.rdl)
		c.tcp.SetWriteDeadline(c.wdl)
	}
	c.hsErr = err
	c.hsDone.Store(true)
	c.dlMu.Unlock()
	return err
}

func earlier(a, b time.Time) time.Time {
	if !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// fail ends the connection with err and returns the first error that ended it.
func (c *Conn) fail(err error) error {
	c.errMu.Lock()
	if c.err == nil {
		c.err = err
	}
	err = c.err
	c.errMu.Unlock()
	c.tcp.Close()
	return err
}

func (c *Conn) failed() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.err
}

// isNamed reports whether err is one of this package's errors, returned as is.
func isNamed(err error) bool {
	return errors.Is(err, ErrAuth) || errors.Is(err, ErrUnknownKey) || errors.Is(err, ErrHandshake) ||
		errors.Is(err, ErrRecordSize) || errors.Is(err, ErrTruncated) || errors.Is(err, ErrExhausted)
}

// Read returns bytes of the peer that authenticated.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.ensureHandshake(); err != nil {
		return 0, err
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.plain) == 0 {
		if len(p) == 0 {
			return 0, nil
		}
		if err := c.readRecord(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	return n, nil
}

// readRecord opens the next record into c.plain. A timeout keeps what was read, so the
// next call goes on; every other failure ends the connection. The caller holds rmu (or
// the handshake lock) and has consumed c.plain.
func (c *Conn) readRecord() error {
	if err := c.failed(); err != nil {
		return err
	}
	for {
		buf := c.rbuf[c.rstart:c.rend]
		if len(buf) >= lenSize {
			n := int(binary.BigEndian.Uint32(buf))
			if n < tagSize || n > maxSealed {
				return c.fail(ErrRecordSize)
			}
			if len(buf) >= lenSize+n {
				return c.open(buf[:lenSize+n])
			}
		}
		if c.rstart > 0 {
			// Move the partial record to the front: a whole record then fits.
			c.rend = copy(c.rbuf, buf)
			c.rstart = 0
		}
		m, err := c.tcp.Read(c.rbuf[c.rend:])
		c.rend += m
		switch {
		case m > 0 || err == nil:
		case err == io.EOF && c.rend == 0:
			return io.EOF // a close between records, as plain TCP reports it
		case err == io.EOF:
			return c.fail(ErrTruncated)
		case isTimeout(err):
			return err
		default:
			return c.fail(err)
		}
	}
}

// open authenticates rec, the next record, and makes its content c.plain.
func (c *Conn) open(rec []byte) error {
	if c.rseq == math.MaxUint64 {
		return c.fail(ErrExhausted)
	}
	binary.BigEndian.PutUint64(c.rnonce[4:], c.rseq)
	plain, err := c.recv.Open(rec[lenSize:lenSize], c.rnonce[:], rec[lenSize:], rec[:lenSize])
	if err != nil {
		return c.fail(ErrAuth)
	}
	c.rseq++
	c.rstart += len(rec)
	c.plain = plain
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Write seals p in records of at most maxPlain bytes. A failed write ends the connection
// (a record cut in the middle cannot be resumed), a timeout included.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.ensureHandshake(); err != nil {
		return 0, err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n := 0
	for n < len(p) {
		chunk := p[n:min(len(p), n+maxPlain)]
		if err := c.writeRecord(chunk); err != nil {
			return n, err
		}
		n += len(chunk)
	}
	return n, nil
}

// writeRecord seals plain into one record and sends it. The caller holds wmu (or the
// handshake lock).
func (c *Conn) writeRecord(plain []byte) error {
	if err := c.failed(); err != nil {
		return err
	}
	if c.wseq == math.MaxUint64 {
		return c.fail(ErrExhausted)
	}
	hdr := c.wbuf[:lenSize]
	binary.BigEndian.PutUint32(hdr, uint32(len(plain)+tagSize))
	binary.BigEndian.PutUint64(c.wnonce[4:], c.wseq)
	sealed := c.send.Seal(c.wbuf[lenSize:lenSize], c.wnonce[:], plain, hdr)
	c.wseq++
	if _, err := c.tcp.Write(c.wbuf[:lenSize+len(sealed)]); err != nil {
		return c.fail(err)
	}
	return nil
}

// Close closes the TCP connection.
func (c *Conn) Close() error { return c.tcp.Close() }

// LocalAddr is the TCP connection's local address.
func (c *Conn) LocalAddr() net.Addr { return c.tcp.LocalAddr() }

// RemoteAddr is the TCP connection's remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.tcp.RemoteAddr() }

// SetDeadline sets both deadlines. During the handshake they are kept and applied when
// it ends; the handshake itself stops at the earlier of them and its own deadline.
func (c *Conn) SetDeadline(t time.Time) error {
	return c.setDeadlines(t, t, true, true)
}

// SetReadDeadline sets the read deadline (see SetDeadline).
func (c *Conn) SetReadDeadline(t time.Time) error {
	return c.setDeadlines(t, time.Time{}, true, false)
}

// SetWriteDeadline sets the write deadline (see SetDeadline).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.setDeadlines(time.Time{}, t, false, true)
}

func (c *Conn) setDeadlines(rd, wd time.Time, setR, setW bool) error {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	if setR {
		c.rdl = rd
	}
	if setW {
		c.wdl = wd
	}
	if !c.hsDone.Load() {
		return nil
	}
	switch {
	case setR && setW:
		return c.tcp.SetDeadline(rd)
	case setR:
		return c.tcp.SetReadDeadline(rd)
	default:
		return c.tcp.SetWriteDeadline(wd)
	}
}
