// Decoding: a whole datagram checked before any frame in it is believed.

package wire

import (
	"encoding/binary"
	"hash/crc32"
)

// Frame is one decoded frame. Its byte slices alias the datagram: copy what must
// outlive the buffer.
type Frame struct {
	Op       Op
	ID       uint64
	TTLMs    uint32 // LOCK, UPDATE
	LockID   uint64 // UPDATE, UNLOCK
	Fence    uint64 // OK
	Key      []byte // LOCK, UPDATE, UNLOCK
	Flags    uint16 // LOCK, LOCKMANY
	WaitMs   uint32 // LOCK, LOCKMANY with LockWait
	Keys     []byte // LOCKMANY: KeyCount × (u8 k, k bytes); read with NextKey
	KeyCount int    // LOCKMANY
	Info     []byte // CONNECT
	Cookie   []byte // CONNECT (empty or CookieSize bytes), COOKIE
	Code     Code   // ERROR
	Text     []byte // ERROR
	PadLen   int    // PAD: body length

	ServerID uint16 // REDIRECT, CONNECTED
	Addr     []byte // REDIRECT

	// CONNECTED
	Session            uint64
	MaxTTLMs           uint32
	SessionTimeoutMs   uint32
	RetransmitWindowMs uint32
	serverCount        int
	servers            []byte
}

// Connected returns the body of a CONNECTED frame. It allocates: CONNECT is rare.
func (f *Frame) Connected() Connected {
	c := Connected{
		Session:            f.Session,
		MaxTTLMs:           f.MaxTTLMs,
		SessionTimeoutMs:   f.SessionTimeoutMs,
		RetransmitWindowMs: f.RetransmitWindowMs,
		ServerID:           f.ServerID,
		Servers:            make([]Server, 0, f.serverCount),
	}
	b := f.servers
	for i := 0; i < f.serverCount; i++ {
		n := int(b[2])
		c.Servers = append(c.Servers, Server{ID: binary.BigEndian.Uint16(b), Addr: string(b[3 : 3+n])})
		b = b[3+n:]
	}
	return c
}

// Datagram is a datagram whose every byte has been checked by Parse.
type Datagram struct {
	Header
	frames []byte
}

// Parse checks a whole datagram: header, length, checksum, and every frame's bounds and
// layout. replies selects the direction: reply opcodes only, or request opcodes only.
// Nothing in a datagram that fails is to be believed.
func Parse(b []byte, replies bool) (Datagram, error) {
	if len(b) < HeaderSize+FrameHeaderSize+TrailerSize {
		return Datagram{}, ErrShort
	}
	if b[0] != Version {
		return Datagram{}, ErrVersion
	}
	flags := b[1]
	if flags&^FlagBusy != 0 || (!replies && flags != 0) {
		return Datagram{}, ErrFlags
	}
	if int(binary.BigEndian.Uint16(b[2:])) != len(b) {
		return Datagram{}, ErrLength
	}
	end := len(b) - TrailerSize
	if crc32.Checksum(b[:end], castagnoli) != binary.BigEndian.Uint32(b[end:]) {
		return Datagram{}, ErrChecksum
	}
	d := Datagram{
		Header: Header{Flags: flags, Session: binary.BigEndian.Uint64(b[4:]), Floor: binary.BigEndian.Uint64(b[12:])},
		frames: b[HeaderSize:end],
	}
	var f Frame
	rest := d.frames
	connects, others := 0, 0
	for len(rest) > 0 {
		n, err := decodeFrame(rest, &f)
		if err != nil {
			return Datagram{}, err
		}
		if f.Op.IsReply() != replies {
			return Datagram{}, ErrDirection
		}
		switch f.Op {
		case OpConnect:
			if len(b) < MinConnectDatagram {
				return Datagram{}, ErrSmallConnect
			}
			connects++
		case OpPad:
		default:
			others++
		}
		rest = rest[n:]
	}
	if connects > 1 || (connects == 1 && others > 0) {
		// One CONNECT per datagram: its padding pays for one reply, not for many.
		return Datagram{}, ErrConnectAlone
	}
	return d, nil
}

// Next decodes the next frame into f and reports whether there was one.
func (d *Datagram) Next(f *Frame) bool {
	if len(d.frames) == 0 {
		return false
	}
	n, _ := decodeFrame(d.frames, f) // checked by Parse
	d.frames = d.frames[n:]
	return true
}

// decodeFrame decodes the frame at the start of b and returns its size.
func decodeFrame(b []byte, f *Frame) (int, error) {
	if len(b) < FrameHeaderSize {
		return 0, ErrTruncated
	}
	n := int(binary.BigEndian.Uint16(b[2:]))
	if len(b) < FrameHeaderSize+n {
		return 0, ErrTruncated
	}
	if b[1] != 0 {
		return 0, ErrBadBody
	}
	*f = Frame{Op: Op(b[0]), ID: binary.BigEndian.Uint64(b[4:])}
	body := b[FrameHeaderSize : FrameHeaderSize+n]
	if !decodeBody(body, f) {
		if !knownOp(f.Op) {
			return 0, ErrUnknownOp
		}
		return 0, ErrBadBody
	}
	return FrameHeaderSize + n, nil
}

func knownOp(op Op) bool {
	switch op {
	case OpPad, OpConnect, OpPing, OpTouch, OpDisconnect, OpLock, OpUpdate, OpUnlock, OpUnlockAll, OpLockMany, OpQueued,
		OpConnected, OpPong, OpOK, OpLocked, OpIsolated, OpDisconnected, OpRedirect, OpError, OpCookie:
		return true
	}
	return false
}

// lockHead decodes what LOCK and LOCKMANY share: ttl, flags and, with LockWait, the
// wait bound. It returns the rest of the body.
func lockHead(body []byte, f *Frame) ([]byte, bool) {
	if len(body) < 6 {
		return nil, false
	}
	f.TTLMs = binary.BigEndian.Uint32(body)
	f.Flags = binary.BigEndian.Uint16(body[4:])
	f.WaitMs = 0
	if f.Flags&^lockKnownFlags != 0 {
		return nil, false
	}
	rest := body[6:]
	if f.Flags&LockWait != 0 {
		if len(rest) < 4 {
			return nil, false
		}
		f.WaitMs = binary.BigEndian.Uint32(rest)
		rest = rest[4:]
	}
	return rest, true
}

// NextKey returns the first key of a LOCKMANY's key list and the rest of the list:
// for rest := f.Keys; len(rest) > 0; { var k []byte; k, rest = wire.NextKey(rest) }.
// The list was checked by Parse.
func NextKey(list []byte) (key, rest []byte) {
	n := int(list[0])
	return list[1 : 1+n], list[1+n:]
}

// decodeBody fills f from body and reports whether body matches f.Op's layout exactly.
func decodeBody(body []byte, f *Frame) bool {
	be := binary.BigEndian
	switch f.Op {
	case OpPad:
		for _, c := range body {
			if c != 0 {
				return false
			}
		}
		f.PadLen = len(body)
		return f.ID == 0
	case OpPing, OpTouch, OpDisconnect, OpUnlockAll, OpPong, OpLocked, OpIsolated, OpDisconnected:
		return len(body) == 0
	case OpConnect:
		if len(body) < 2 {
			return false
		}
		n := int(be.Uint16(body))
		if len(body) < 2+n+1 || n > MaxIsolationInfo {
			return false
		}
		c := int(body[2+n])
		if (c != 0 && c != CookieSize) || len(body) != 2+n+1+c {
			return false
		}
		f.Info = body[2 : 2+n]
		f.Cookie = body[2+n+1:]
		return true
	case OpQueued:
		return len(body) == 0
	case OpCookie:
		if len(body) != CookieSize {
			return false
		}
		f.Cookie = body
		return true
	case OpLock:
		rest, ok := lockHead(body, f)
		if !ok || len(rest) < 1 || len(rest) != 1+int(rest[0]) {
			return false
		}
		f.Key = rest[1:]
		return true
	case OpLockMany:
		rest, ok := lockHead(body, f)
		if !ok || len(rest) < 1 {
			return false
		}
		f.KeyCount = int(rest[0])
		f.Keys = rest[1:]
		if f.KeyCount < 1 || f.KeyCount > MaxManyKeys {
			return false
		}
		keys := f.Keys
		for i := 0; i < f.KeyCount; i++ {
			if len(keys) < 1 || keys[0] == 0 || len(keys) < 1+int(keys[0]) {
				return false
			}
			keys = keys[1+int(keys[0]):]
		}
		return len(keys) == 0
	case OpUpdate:
		if len(body) < updateFixed || len(body) != updateFixed+int(body[updateFixed-1]) {
			return false
		}
		f.LockID = be.Uint64(body)
		f.TTLMs = be.Uint32(body[8:])
		f.Key = body[updateFixed:]
		return true
	case OpUnlock:
		if len(body) < unlockFixed || len(body) != unlockFixed+int(body[unlockFixed-1]) {
			return false
		}
		f.LockID = be.Uint64(body)
		f.Key = body[unlockFixed:]
		return true
	case OpOK:
		if len(body) != 8 {
			return false
		}
		f.Fence = be.Uint64(body)
		return true
	case OpRedirect:
		if len(body) < 3 || len(body) != 3+int(body[2]) {
			return false
		}
		f.ServerID = be.Uint16(body)
		f.Addr = body[3:]
		return true
	case OpError:
		if len(body) < 4 {
			return false
		}
		t := int(be.Uint16(body[2:]))
		if len(body) != 4+t || t > MaxErrorText {
			return false
		}
		f.Code = Code(be.Uint16(body))
		f.Text = body[4:]
		return true
	case OpConnected:
		if len(body) < connectedFixed {
			return false
		}
		f.Session = be.Uint64(body)
		f.MaxTTLMs = be.Uint32(body[8:])
		f.SessionTimeoutMs = be.Uint32(body[12:])
		f.RetransmitWindowMs = be.Uint32(body[16:])
		f.ServerID = be.Uint16(body[20:])
		f.serverCount = int(body[22])
		rest := body[connectedFixed:]
		f.servers = rest
		if f.serverCount > MaxServers {
			return false
		}
		for i := 0; i < f.serverCount; i++ {
			if len(rest) < 3 || len(rest) < 3+int(rest[2]) {
				return false
			}
			rest = rest[3+int(rest[2]):]
		}
		return len(rest) == 0
	}
	return false
}
