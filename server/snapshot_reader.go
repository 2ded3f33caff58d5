// The snapshot's reader: the primitives restoreMachine decodes with.

package server

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// snapReader reads a snapshot. Its first error sticks and empties it, so every read
// after it returns zero and every count 0: a decoder checks now and then, not after
// every field, and never loops long on garbage.
type snapReader struct {
	b   []byte
	err error
}

func (r *snapReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", errBadSnapshot, fmt.Sprintf(format, args...))
	}
	r.b = nil
}

// uvarint reads a uvarint in its shortest form (so that a snapshot has one encoding).
func (r *snapReader) uvarint(what string) uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 || (n > 1 && r.b[n-1] == 0) {
		r.fail("%s: truncated or malformed", what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

// varint reads a zig-zag varint, as binary.AppendVarint writes it.
func (r *snapReader) varint(what string) int64 {
	u := r.uvarint(what)
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

// int reads a uvarint of at most most.
func (r *snapReader) int(what string, most int) int {
	v := r.uvarint(what)
	if v > uint64(most) {
		r.fail("%s: %d, more than %d", what, v, most)
		return 0
	}
	return int(v)
}

// count reads the number of records that follow, each at least size bytes long.
func (r *snapReader) count(what string, size int) int {
	return r.int(what, len(r.b)/size)
}

func (r *snapReader) byte(what string) byte {
	if len(r.b) == 0 {
		r.fail("%s: truncated", what)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// bytes returns the next n bytes, or zeros past the end.
func (r *snapReader) bytes(n int, what string) []byte {
	if len(r.b) < n {
		r.fail("%s: truncated", what)
		return make([]byte, n)
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *snapReader) str(what string, most int) string {
	n := r.int(what, min(most, len(r.b)))
	return string(r.bytes(n, what))
}

// addr reads an address in netip's binary form, which must be canonical.
func (r *snapReader) addr(what string) netip.Addr {
	b := []byte(r.str(what, 255))
	var a netip.Addr
	if err := a.UnmarshalBinary(b); err != nil {
		r.fail("%s: %v", what, err)
	} else if again, _ := a.AppendBinary(nil); !bytes.Equal(again, b) {
		r.fail("%s: %v not in its canonical form", what, a)
	}
	return a
}
