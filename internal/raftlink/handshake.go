// The handshake of a keyed connection.
//
//	dialer → acceptor  hello: "NMRL", version 1, the dialer's sealing key id, 32 random bytes
//	acceptor → dialer  hello: "NMRL", version 1, the key id it picked, 32 random bytes
//	                   record 0 (acceptor → dialer): the confirmation
//	dialer → acceptor  record 0 (dialer → acceptor): the confirmation
//
// The acceptor picks the dialer's key when it has it, else its own sealing key, so nodes
// whose key files list a new key first, and nodes not yet given it, still talk during a
// rotation. Each direction's key is HKDF-SHA256 over the picked key's secret, with the
// direction's label and both hellos as info: fresh per connection (both randoms), and any
// change to a hello in transit (a key id rewritten to force another key) leaves the two
// sides with different keys, so the confirmations do not open. A side that opens the
// other's confirmation knows the peer holds the secret; records of the other direction
// are sealed under another key, so a confirmation reflected back does not open either.
package raftlink

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"

	"github.com/netmutex/netmutex/internal/seal"
)

const (
	magic      = "NMRL"
	version    = 1
	randomSize = 32
	helloSize  = len(magic) + 2 + randomSize

	labelToAcceptor = "netmutex raftlink v1 dialer to acceptor"
	labelToDialer   = "netmutex raftlink v1 acceptor to dialer"
	confirmation    = "netmutex raftlink v1 key confirmation"
)

// hello is the first message of each side.
type hello [helloSize]byte

func newHello(keyID uint8) hello {
	var h hello
	copy(h[:], magic)
	h[len(magic)] = version
	h[len(magic)+1] = keyID
	rand.Read(h[len(magic)+2:]) // never fails (crypto/rand, Go 1.24+)
	return h
}

func (h *hello) check() error {
	if string(h[:len(magic)]) != magic || h[len(magic)] != version {
		return fmt.Errorf("%w: peer sent no raftlink v%d hello", ErrHandshake, version)
	}
	return nil
}

func (h *hello) keyID() uint8 { return h[len(magic)+1] }

// sessionKeys derives the AEAD of each direction from the picked key's secret and the
// two hellos.
func sessionKeys(secret *[seal.KeySize]byte, fromDialer, fromAcceptor *hello) (toAcceptor, toDialer cipher.AEAD) {
	derive := func(label string) cipher.AEAD {
		info := make([]byte, 0, len(label)+2*helloSize)
		info = append(info, label...)
		info = append(info, fromDialer[:]...)
		info = append(info, fromAcceptor[:]...)
		var k [chacha20poly1305.KeySize]byte
		// HKDF-Expand fails only past 255 hash lengths; this reads one.
		if _, err := io.ReadFull(hkdf.New(sha256.New, secret[:], nil, info), k[:]); err != nil {
			panic(err)
		}
		aead, err := chacha20poly1305.New(k[:])
		if err != nil {
			panic(err) // k has KeySize bytes
		}
		return aead
	}
	return derive(labelToAcceptor), derive(labelToDialer)
}

func handshakeErr(err error) error { return fmt.Errorf("%w: %w", ErrHandshake, err) }

// dialerHandshake runs the dialer's side. The dialer sends its confirmation before it
// checks the acceptor's, so a wrong key is refused on both sides with ErrAuth.
func (c *Conn) dialerHandshake() error {
	mine := newHello(c.keys.sealing)
	if _, err := c.tcp.Write(mine[:]); err != nil {
		return handshakeErr(err)
	}
	var theirs hello
	if _, err := io.ReadFull(c.tcp, theirs[:]); err != nil {
		return handshakeErr(err)
	}
	if err := theirs.check(); err != nil {
		return err
	}
	secret := c.keys.secret[theirs.keyID()]
	if secret == nil {
		return fmt.Errorf("%w: acceptor picked key %d", ErrUnknownKey, theirs.keyID())
	}
	toAcceptor, toDialer := sessionKeys(secret, &mine, &theirs)
	c.initRecords(toDialer, toAcceptor)
	if err := c.writeRecord([]byte(confirmation)); err != nil {
		return handshakeErr(err)
	}
	return c.readConfirmation()
}

// acceptorHandshake runs the acceptor's side.
func (c *Conn) acceptorHandshake() error {
	var theirs hello
	if _, err := io.ReadFull(c.tcp, theirs[:]); err != nil {
		return handshakeErr(err)
	}
	if err := theirs.check(); err != nil {
		return err
	}
	id := theirs.keyID()
	secret := c.keys.secret[id]
	if secret == nil {
		// The dialer may still know our sealing key (a rotation under way).
		id = c.keys.sealing
		secret = c.keys.secret[id]
	}
	mine := newHello(id)
	err := c.acceptorFinish(secret, &theirs, &mine)
	if err != nil && id != theirs.keyID() {
		return fmt.Errorf("%w: dialer named key %d: %w", ErrUnknownKey, theirs.keyID(), err)
	}
	return err
}

func (c *Conn) acceptorFinish(secret *[seal.KeySize]byte, theirs, mine *hello) error {
	if _, err := c.tcp.Write(mine[:]); err != nil {
		return handshakeErr(err)
	}
	toAcceptor, toDialer := sessionKeys(secret, theirs, mine)
	c.initRecords(toAcceptor, toDialer)
	if err := c.writeRecord([]byte(confirmation)); err != nil {
		return handshakeErr(err)
	}
	return c.readConfirmation()
}

// readConfirmation reads record 0 and checks that it is the confirmation.
func (c *Conn) readConfirmation() error {
	if err := c.readRecord(); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if isNamed(err) {
			return err
		}
		return handshakeErr(err)
	}
	ok := string(c.plain) == confirmation
	c.plain = nil
	if !ok {
		return ErrAuth
	}
	return nil
}
