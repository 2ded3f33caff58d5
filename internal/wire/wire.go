// Package wire implements the netmutex wire protocol of docs/PROTOCOL.md for both the
// client and the server: append-style encoders over caller-owned buffers and a decoder
// that checks a whole datagram before anything in it is believed.
package wire

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Sizes and limits, from docs/PROTOCOL.md.
const (
	Version         = 1
	HeaderSize      = 20
	TrailerSize     = 4
	FrameHeaderSize = 12
	// MaxDatagram fits an Ethernet MTU of 1500 under IPv6 (40) and UDP (8) headers with
	// room to spare, so no datagram is ever fragmented.
	MaxDatagram = 1400
	// MinConnectDatagram is the least size of a datagram carrying CONNECT; padding it
	// keeps the CONNECTED reply no larger than the request (no amplification).
	MinConnectDatagram = 512
	MaxKey             = 255
	MaxIsolationInfo   = 400
	MaxErrorText       = 64
	MaxServers         = 32
)

// FlagBusy is set by a server that has fallen behind.
const FlagBusy = 1 << 0

// Op is a frame's opcode.
type Op uint8

// Requests.
const (
	OpPad        Op = 0x00
	OpConnect    Op = 0x01
	OpPing       Op = 0x02
	OpTouch      Op = 0x03
	OpDisconnect Op = 0x04
	OpLock       Op = 0x10
	OpUpdate     Op = 0x11
	OpUnlock     Op = 0x12
	OpUnlockAll  Op = 0x13
	OpLockMany   Op = 0x14
)

// Replies.
const (
	OpConnected    Op = 0x81
	OpPong         Op = 0x82
	OpOK           Op = 0x83
	OpLocked       Op = 0x84
	OpIsolated     Op = 0x85
	OpDisconnected Op = 0x86
	OpRedirect     Op = 0x87
	OpError        Op = 0x88
	OpCookie       Op = 0x89
	OpQueued       Op = 0x8a
)

// IsReply tells a reply opcode from a request opcode.
func (op Op) IsReply() bool { return op&0x80 != 0 }

// Code is the code of an ERROR reply.
type Code uint16

// Error codes.
const (
	CodeBadRequest       Code = 1
	CodeBadTTL           Code = 2
	CodeTTLTooLong       Code = 3
	CodeLockDelay        Code = 4
	CodeNotHeld          Code = 5
	CodeStale            Code = 6
	CodeBadIsolationInfo Code = 7
	CodeAuth             Code = 8
	CodeTooManySessions  Code = 9
	CodeTooManyLocks     Code = 10
	CodeRateLimited      Code = 11
	CodeForbidden        Code = 12
	CodeServerFull       Code = 13
	CodeTooManyWaiters   Code = 14
	// CodeNotLeader: this server is a follower of a cluster (or a leader not yet ready):
	// the request was not applied; send it again, with the same id, to another server.
	CodeNotLeader Code = 15
)

// LOCK and LOCKMANY flags.
const (
	// LockWait asks to wait in the key's queue instead of being refused LOCKED; a
	// u32 wait bound in milliseconds follows the flags (0: no bound of the client's).
	LockWait       = 1 << 0
	lockKnownFlags = LockWait
)

// MaxManyKeys is the most keys one LOCKMANY may name.
const MaxManyKeys = 32

// CookieSize is the size of an address-validation cookie (COOKIE, CONNECT).
const CookieSize = 16

// Decoding errors. Each makes the whole datagram invalid.
var (
	ErrShort        = errors.New("wire: datagram too short")
	ErrVersion      = errors.New("wire: unknown version")
	ErrFlags        = errors.New("wire: reserved flag set")
	ErrLength       = errors.New("wire: length field does not match datagram")
	ErrChecksum     = errors.New("wire: wrong checksum")
	ErrTruncated    = errors.New("wire: truncated frame")
	ErrUnknownOp    = errors.New("wire: unknown opcode")
	ErrBadBody      = errors.New("wire: frame body does not match its opcode")
	ErrDirection    = errors.New("wire: frame of the wrong direction")
	ErrSmallConnect = errors.New("wire: CONNECT in a datagram smaller than 512 bytes")
	ErrConnectAlone = errors.New("wire: CONNECT with another frame than PAD in its datagram")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is the fixed part of a datagram.
type Header struct {
	Flags   uint8
	Session uint64
	Floor   uint64
}

// BeginDatagram starts a datagram in b, which must be empty: FinishDatagram patches the
// length into the header at b[0:].
func BeginDatagram(b []byte, h Header) []byte {
	b = append(b, Version, h.Flags, 0, 0)
	b = binary.BigEndian.AppendUint64(b, h.Session)
	return binary.BigEndian.AppendUint64(b, h.Floor)
}

// FinishDatagram patches the length of the datagram b, begun by BeginDatagram, and
// appends its checksum.
func FinishDatagram(b []byte) []byte {
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)+TrailerSize))
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// frameIDOffset is where a frame's request id starts: after opcode, flags and length.
const frameIDOffset = 4

// PutFrameID writes id into the frame that starts at frame[0]. The client encodes a
// request once with id 0 and patches its id in when the send loop assigns one.
func PutFrameID(frame []byte, id uint64) {
	binary.BigEndian.PutUint64(frame[frameIDOffset:], id)
}

func appendFrameHeader(b []byte, op Op, id uint64, bodyLen int) []byte {
	b = append(b, byte(op), 0, byte(bodyLen>>8), byte(bodyLen))
	return binary.BigEndian.AppendUint64(b, id)
}

// lockFixed is the LOCK body before the key: ttl, flags, key length. The two flag
// bytes are reserved (shared locks, blocking acquire) and make the smallest LOCK frame
// as large as the OK that grants it, so no reply outgrows its request.
const lockFixed = 4 + 2 + 1

// UnlockSize is the size of an UNLOCK frame for a key of k bytes: the client packs its
// clean-up UNLOCKs straight into a datagram and must know whether one fits.
func UnlockSize(k int) int { return FrameHeaderSize + unlockFixed + k }

// Fixed body sizes before the key: UPDATE has lock id, ttl and key length, UNLOCK lock
// id and key length.
const (
	updateFixed = 8 + 4 + 1
	unlockFixed = 8 + 1
)

// AppendEmpty appends a frame without body: PING, TOUCH, DISCONNECT, UNLOCKALL, PONG,
// LOCKED, ISOLATED, DISCONNECTED.
func AppendEmpty(b []byte, op Op, id uint64) []byte {
	return appendFrameHeader(b, op, id, 0)
}

// AppendPad appends a PAD frame whose whole size is n (at least FrameHeaderSize).
func AppendPad(b []byte, n int) []byte {
	body := n - FrameHeaderSize
	b = appendFrameHeader(b, OpPad, 0, body)
	for i := 0; i < body; i++ {
		b = append(b, 0)
	}
	return b
}

// AppendConnect appends a CONNECT; nonce is its request id, cookie is empty or the
// CookieSize bytes a COOKIE reply gave.
func AppendConnect(b []byte, nonce uint64, info string, cookie []byte) []byte {
	b = appendFrameHeader(b, OpConnect, nonce, 2+len(info)+1+len(cookie))
	b = binary.BigEndian.AppendUint16(b, uint16(len(info)))
	b = append(b, info...)
	b = append(b, byte(len(cookie)))
	return append(b, cookie...)
}

// AppendCookie appends a COOKIE reply carrying cookie (CookieSize bytes).
func AppendCookie(b []byte, id uint64, cookie []byte) []byte {
	b = appendFrameHeader(b, OpCookie, id, CookieSize)
	return append(b, cookie[:CookieSize]...)
}

// AppendLock appends a LOCK. The caller has checked 1 <= len(key) <= MaxKey.
func AppendLock(b []byte, id uint64, ttlMs uint32, key string) []byte {
	b = appendFrameHeader(b, OpLock, id, lockFixed+len(key))
	b = binary.BigEndian.AppendUint32(b, ttlMs)
	b = append(b, 0, 0, byte(len(key)))
	return append(b, key...)
}

// AppendLockWait appends a LOCK that waits in the key's queue for at most waitMs
// milliseconds (0: no bound of the client's).
func AppendLockWait(b []byte, id uint64, ttlMs, waitMs uint32, key string) []byte {
	b = appendFrameHeader(b, OpLock, id, lockFixed+4+len(key))
	b = binary.BigEndian.AppendUint32(b, ttlMs)
	b = binary.BigEndian.AppendUint16(b, LockWait)
	b = binary.BigEndian.AppendUint32(b, waitMs)
	b = append(b, byte(len(key)))
	return append(b, key...)
}

// AppendLockMany appends a LOCKMANY of keys (1 to MaxManyKeys, each 1 to MaxKey bytes,
// checked by the caller), waiting if wait is set.
func AppendLockMany(b []byte, id uint64, ttlMs uint32, wait bool, waitMs uint32, keys []string) []byte {
	n := 4 + 2 + 1
	if wait {
		n += 4
	}
	for _, k := range keys {
		n += 1 + len(k)
	}
	b = appendFrameHeader(b, OpLockMany, id, n)
	b = binary.BigEndian.AppendUint32(b, ttlMs)
	if wait {
		b = binary.BigEndian.AppendUint16(b, LockWait)
		b = binary.BigEndian.AppendUint32(b, waitMs)
	} else {
		b = append(b, 0, 0)
	}
	b = append(b, byte(len(keys)))
	for _, k := range keys {
		b = append(b, byte(len(k)))
		b = append(b, k...)
	}
	return b
}

// AppendUpdate appends an UPDATE of lock lockID.
func AppendUpdate(b []byte, id, lockID uint64, ttlMs uint32, key string) []byte {
	b = appendFrameHeader(b, OpUpdate, id, updateFixed+len(key))
	b = binary.BigEndian.AppendUint64(b, lockID)
	b = binary.BigEndian.AppendUint32(b, ttlMs)
	b = append(b, byte(len(key)))
	return append(b, key...)
}

// AppendUnlock appends an UNLOCK of lock lockID.
func AppendUnlock(b []byte, id, lockID uint64, key string) []byte {
	b = appendFrameHeader(b, OpUnlock, id, unlockFixed+len(key))
	b = binary.BigEndian.AppendUint64(b, lockID)
	b = append(b, byte(len(key)))
	return append(b, key...)
}

// AppendOK appends an OK carrying fence.
func AppendOK(b []byte, id, fence uint64) []byte {
	b = appendFrameHeader(b, OpOK, id, 8)
	return binary.BigEndian.AppendUint64(b, fence)
}

// AppendRedirect appends a REDIRECT to server serverID at addr (at most 255 bytes).
func AppendRedirect(b []byte, id uint64, serverID uint16, addr string) []byte {
	b = appendFrameHeader(b, OpRedirect, id, 3+len(addr))
	b = binary.BigEndian.AppendUint16(b, serverID)
	b = append(b, byte(len(addr)))
	return append(b, addr...)
}

// AppendError appends an ERROR; text beyond MaxErrorText bytes is cut.
func AppendError(b []byte, id uint64, code Code, text string) []byte {
	if len(text) > MaxErrorText {
		text = text[:MaxErrorText]
	}
	b = appendFrameHeader(b, OpError, id, 4+len(text))
	b = binary.BigEndian.AppendUint16(b, uint16(code))
	b = binary.BigEndian.AppendUint16(b, uint16(len(text)))
	return append(b, text...)
}

// Server is one member of the cluster as told by CONNECTED.
type Server struct {
	ID   uint16
	Addr string
}

// Connected is the body of a CONNECTED reply.
type Connected struct {
	Session            uint64
	MaxTTLMs           uint32
	SessionTimeoutMs   uint32
	RetransmitWindowMs uint32
	ServerID           uint16
	Servers            []Server
}

// connectedFixed is CONNECTED's body before its server list: session, max TTL, session
// timeout, retransmit window, server id, server count.
const connectedFixed = 8 + 4 + 4 + 4 + 2 + 1

// MaxConnectedFrame keeps CONNECTED within the smallest CONNECT datagram, so that the
// reply is never larger than the request (no amplification).
const MaxConnectedFrame = MinConnectDatagram - HeaderSize - TrailerSize

// ConnectedSize is the size of the CONNECTED frame AppendConnected writes for servers:
// the one place that size is computed.
func ConnectedSize(servers []Server) int {
	n, _ := connectedBody(servers)
	return FrameHeaderSize + n
}

// connectedBody returns the body size and server count of a CONNECTED for servers:
// servers beyond MaxServers, or with an address over 255 bytes, are left out.
func connectedBody(servers []Server) (size, count int) {
	size = connectedFixed
	for i, s := range servers {
		if i == MaxServers {
			break
		}
		if len(s.Addr) <= 255 {
			size += 3 + len(s.Addr)
			count++
		}
	}
	return size, count
}

// AppendConnected appends a CONNECTED reply. Servers beyond MaxServers, or with an
// address over 255 bytes, are left out.
func AppendConnected(b []byte, id uint64, c *Connected) []byte {
	servers := c.Servers
	if len(servers) > MaxServers {
		servers = servers[:MaxServers]
	}
	n, count := connectedBody(servers)
	b = appendFrameHeader(b, OpConnected, id, n)
	b = binary.BigEndian.AppendUint64(b, c.Session)
	b = binary.BigEndian.AppendUint32(b, c.MaxTTLMs)
	b = binary.BigEndian.AppendUint32(b, c.SessionTimeoutMs)
	b = binary.BigEndian.AppendUint32(b, c.RetransmitWindowMs)
	b = binary.BigEndian.AppendUint16(b, c.ServerID)
	b = append(b, byte(count))
	for _, s := range servers {
		if len(s.Addr) <= 255 {
			b = binary.BigEndian.AppendUint16(b, s.ID)
			b = append(b, byte(len(s.Addr)))
			b = append(b, s.Addr...)
		}
	}
	return b
}
