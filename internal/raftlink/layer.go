// Package raftlink is the stream layer under hashicorp/raft's NetworkTransport: TCP,
// authenticated both ways and encrypted with the same key file as the clients.
//
// A keyed connection opens with a handshake (handshake.go): the dialer sends a hello
// naming its sealing key, the acceptor answers with the key it picked, both derive one
// key per direction with HKDF-SHA256 from the key's secret and both hellos, and each
// proves it holds the key by sending a sealed confirmation. Every byte after that travels
// in records (conn.go): [u32 length][ChaCha20-Poly1305 sealed bytes], the nonce a counter
// per direction that is never sent, so a record that is tampered with, replayed,
// reordered or dropped does not open and the connection ends with ErrAuth.
//
// The accepting side runs its handshake on the connection's first Read or Write, not in
// Accept: raft reads from every accepted connection in a goroutine of its own, so a slow
// or silent peer holds up only its own connection (for at most HandshakeTimeout), never
// Accept, and a bad peer's failure never reaches Accept, where raft would back off.
package raftlink

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/netmutex/netmutex/internal/seal"
)

// Errors that end a connection. A connection that fails with one stays failed: every
// later Read or Write returns the same error, and the TCP connection is closed.
var (
	// ErrAuth: the peer does not hold the key it names (its confirmation or a record
	// does not open), or a record was tampered with, replayed, reordered or dropped.
	ErrAuth = errors.New("raftlink: authentication failed")
	// ErrUnknownKey: the peer names a key id that is not in the keyring, or the acceptor
	// has none of the dialer's keys.
	ErrUnknownKey = errors.New("raftlink: unknown key id")
	// ErrHandshake: the peer broke off the handshake, let it time out, or did not send a
	// raftlink hello (a plain TCP peer, another protocol, another version). It wraps the
	// cause.
	ErrHandshake = errors.New("raftlink: handshake failed")
	// ErrRecordSize: a record's length field is below the tag size or above the limit.
	ErrRecordSize = errors.New("raftlink: record length out of range")
	// ErrTruncated: the stream ended inside a record.
	ErrTruncated = errors.New("raftlink: stream ends inside a record")
	// ErrExhausted: a direction's record counter reached its end; the counter never
	// wraps, so the connection must be replaced (2^64 records: never in practice).
	ErrExhausted = errors.New("raftlink: record counter exhausted")
)

// HandshakeTimeout bounds a handshake when the caller gives no shorter time. A var so
// tests can shorten it; 5 s is long enough for a loaded machine, short enough that a
// silent peer does not pin a raft goroutine for long.
var HandshakeTimeout = 5 * time.Second

// Layer is a raft.StreamLayer over TCP. Its methods are safe for concurrent use. It
// starts no goroutine of its own.
type Layer struct {
	ln    net.Listener
	addr  net.Addr     // what Addr reports: the address peers dial
	local *net.TCPAddr // the local side of dialed connections, nil for any
	keys  *keys        // nil: plain TCP
}

var _ raft.StreamLayer = (*Layer)(nil)

// Listen binds bind (TCP host:port) and returns a raft.StreamLayer. advertise is the
// address Addr reports, the one peers dial; it may differ from bind when a proxy sits in
// front; "" means the bound address. With keys != nil every connection is authenticated
// both ways and every byte after the handshake is sealed; with keys == nil it is plain
// TCP. Dial binds its connections to the IP of bind (any port), so that whoever receives
// them can tell nodes apart by source IP.
func Listen(bind, advertise string, keyring *seal.Keyring) (*Layer, error) {
	var k *keys
	if keyring != nil {
		k = keysFrom(keyring)
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raftlink: %w", err)
	}
	bound := ln.Addr().(*net.TCPAddr)
	l := &Layer{ln: ln, addr: bound, keys: k}
	if !bound.IP.IsUnspecified() {
		l.local = &net.TCPAddr{IP: bound.IP}
	}
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("raftlink: advertise: %w", err)
		}
		l.addr = a
	}
	return l, nil
}

// Accept waits for the next connection. A keyed connection is returned before its
// handshake, which runs on its first Read or Write (see the package comment); Accept
// itself fails only when the listener does.
func (l *Layer) Accept() (net.Conn, error) {
	c, err := l.ln.Accept()
	if err != nil {
		return nil, err
	}
	if l.keys == nil {
		return c, nil
	}
	return newConn(c, l.keys, false), nil
}

// Close stops the listener. Connections already made stay open: their owner closes them
// (raft's NetworkTransport.CloseStreams and its connection handlers).
func (l *Layer) Close() error { return l.ln.Close() }

// Addr is the advertised address.
func (l *Layer) Addr() net.Addr { return l.addr }

// Dial connects to address and, with keys, completes the handshake before returning, both
// within timeout (HandshakeTimeout when timeout is 0).
func (l *Layer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 {
		timeout = HandshakeTimeout
	}
	deadline := time.Now().Add(timeout)
	d := net.Dialer{Deadline: deadline}
	if l.local != nil {
		d.LocalAddr = l.local
	}
	c, err := d.Dial("tcp", string(address))
	if err != nil {
		return nil, err
	}
	if l.keys == nil {
		return c, nil
	}
	conn := newConn(c, l.keys, true)
	if err := conn.handshake(deadline); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// keys is what the layer keeps of a keyring: the id it proposes and a link secret per
// key id it knows.
type keys struct {
	sealing uint8
	secret  [seal.MaxKeyID + 1]*[seal.KeySize]byte
}

func keysFrom(r *seal.Keyring) *keys {
	k := &keys{sealing: r.Sealing().ID}
	for id := 1; id <= seal.MaxKeyID; id++ {
		if key := r.Lookup(uint8(id)); key != nil {
			s := linkSecret(key)
			k.secret[id] = &s
		}
	}
	return k
}

// linkSecret is the secret the handshake feeds to HKDF for key: the key file's secret,
// kept apart from the datagrams' AEAD by HKDF's labels.
func linkSecret(key *seal.Key) [seal.KeySize]byte { return key.Secret() }
