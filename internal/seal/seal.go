// Package seal authenticates and encrypts netmutex datagrams with pre-shared keys
// (docs/PROTOCOL.md, "Sealed datagrams"). A sealed datagram wraps a whole plain datagram:
//
//	0  1  version (2)
//	1  1  key id (1-255)
//	2  2  length of the whole sealed datagram
//	4  24 nonce: the sender's 16-byte random prefix, then its 64-bit counter
//	28 n  the plain datagram, encrypted
//	   16 tag
//
// The AEAD is XChaCha20-Poly1305 (golang.org/x/crypto) with the first 28 bytes as
// additional data. A sender's prefix is random per sender and its counter only grows,
// so a nonce is never used twice under one key; the receiver keeps a sliding window of
// counters per peer (Window) to refuse replays.
package seal

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"

	"golang.org/x/crypto/chacha20poly1305"
)

// Layout sizes.
const (
	Version     = 2
	PrefixSize  = 16
	NonceSize   = PrefixSize + 8
	HeaderSize  = 4 + NonceSize
	TagSize     = chacha20poly1305.Overhead
	Overhead    = HeaderSize + TagSize
	KeySize     = chacha20poly1305.KeySize
	MaxKeyID    = 255
	counterBase = 4 + PrefixSize // where the counter sits in the header
)

// Errors of Open. Each makes the datagram worthless: it is dropped.
var (
	ErrNotSealed  = errors.New("seal: not a sealed datagram")
	ErrShort      = errors.New("seal: datagram too short")
	ErrLength     = errors.New("seal: length field does not match datagram")
	ErrUnknownKey = errors.New("seal: unknown key id")
	ErrForged     = errors.New("seal: datagram does not authenticate")
)

// Key is one pre-shared key.
type Key struct {
	ID uint8
	// Admin keys may also release every lock (UNLOCKALL).
	Admin  bool
	aead   cipher.AEAD
	secret [KeySize]byte // for keys derived from it (HKDF), such as Raft's streams'
}

// Secret returns a copy of the key's 32 secret bytes, for derivations (HKDF with a
// label of their own) that must not reuse the datagram AEAD's key as it is.
func (k *Key) Secret() [KeySize]byte { return k.secret }

// NewKey makes a key from 32 secret bytes.
func NewKey(id uint8, secret []byte, admin bool) (*Key, error) {
	if id == 0 {
		return nil, ErrKeyID
	}
	aead, err := chacha20poly1305.NewX(secret)
	if err != nil {
		return nil, ErrKeyBytes
	}
	k := &Key{ID: id, Admin: admin, aead: aead}
	copy(k.secret[:], secret)
	return k, nil
}

// Nonce is the nonce of a datagram: who sealed it, and its place in that sender's count.
type Nonce struct {
	Prefix  [PrefixSize]byte
	Counter uint64
}

// Sealer seals the datagrams of one sender. It is owned by one goroutine (a send loop).
type Sealer struct {
	prefix  [PrefixSize]byte
	counter uint64
}

// NewSealer returns a sealer with a fresh random prefix.
func NewSealer() *Sealer {
	s := &Sealer{}
	rand.Read(s.prefix[:]) // never fails (crypto/rand, Go 1.24+)
	return s
}

// Prefix is this sender's nonce prefix.
func (s *Sealer) Prefix() [PrefixSize]byte { return s.prefix }

// Seal appends the sealed form of plain to dst under key. dst and plain must not overlap.
func (s *Sealer) Seal(dst []byte, key *Key, plain []byte) []byte {
	s.counter++
	n := HeaderSize + len(plain) + TagSize
	start := len(dst)
	dst = append(dst, Version, key.ID, byte(n>>8), byte(n))
	dst = append(dst, s.prefix[:]...)
	dst = binary.BigEndian.AppendUint64(dst, s.counter)
	hdr := dst[start : start+HeaderSize]
	return key.aead.Seal(dst, hdr[4:], plain, hdr)
}

// IsSealed reports whether d claims to be a sealed datagram; it proves nothing.
func IsSealed(d []byte) bool { return len(d) > 0 && d[0] == Version }

// KeyID returns the key id a sealed datagram names, without checking anything else.
func KeyID(d []byte) uint8 {
	if len(d) < 2 {
		return 0
	}
	return d[1]
}

// Open checks the sealed datagram d under the keys of r and appends its plain content
// to dst. It returns the plain datagram, the key that opened it and its nonce; the
// caller checks the nonce against the sender's replay window.
func (r *Keyring) Open(dst, d []byte) ([]byte, *Key, Nonce, error) {
	var nonce Nonce
	if len(d) < Overhead {
		return nil, nil, nonce, ErrShort
	}
	if d[0] != Version {
		return nil, nil, nonce, ErrNotSealed
	}
	if int(binary.BigEndian.Uint16(d[2:])) != len(d) {
		return nil, nil, nonce, ErrLength
	}
	key := r.byID[d[1]]
	if key == nil {
		return nil, nil, nonce, ErrUnknownKey
	}
	plain, err := key.aead.Open(dst, d[4:HeaderSize], d[HeaderSize:], d[:HeaderSize])
	if err != nil {
		return nil, nil, nonce, ErrForged
	}
	copy(nonce.Prefix[:], d[4:])
	nonce.Counter = binary.BigEndian.Uint64(d[counterBase:])
	return plain, key, nonce, nil
}
