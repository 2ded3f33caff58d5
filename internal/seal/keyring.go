// The key file: lines "ID HEX [admin]", the first key seals, every key opens.

package seal

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Errors of the key file.
var (
	ErrKeyID    = errors.New("seal: key id must be 1-255")
	ErrKeyBytes = errors.New("seal: a key is 32 bytes, 64 hex digits")
	ErrNoKeys   = errors.New("seal: no keys in the key file")
	ErrDupKey   = errors.New("seal: key id listed twice")
)

// Keyring is the keys of a key file: the first seals, every one opens, so a new key can
// be listed first on every server and client in turn while the old one still opens.
type Keyring struct {
	first *Key
	byID  [MaxKeyID + 1]*Key
	n     int
}

// Sealing is the key new datagrams are sealed with.
func (r *Keyring) Sealing() *Key { return r.first }

// Lookup returns the key with id, or nil.
func (r *Keyring) Lookup(id uint8) *Key { return r.byID[id] }

// Len is how many keys there are.
func (r *Keyring) Len() int { return r.n }

// LoadKeyFile reads a key file (see ParseKeys).
func LoadKeyFile(path string) (*Keyring, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := ParseKeys(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// ParseKeys reads lines "ID HEX [admin]": a key id 1-255, 32 bytes in hex, and the word
// admin for a key that may release every lock. '#' starts a comment; blank lines are
// ignored. The first key seals.
func ParseKeys(in io.Reader) (*Keyring, error) {
	r := &Keyring{}
	sc := bufio.NewScanner(in)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		fields := strings.Fields(text)
		if len(fields) == 0 {
			continue
		}
		if len(fields) > 3 || len(fields) == 1 || (len(fields) == 3 && fields[2] != "admin") {
			return nil, fmt.Errorf("line %d: want \"ID HEX\" or \"ID HEX admin\"", line)
		}
		id, err := strconv.ParseUint(fields[0], 10, 8)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("line %d: %w", line, ErrKeyID)
		}
		secret, err := hex.DecodeString(fields[1])
		if err != nil || len(secret) != KeySize {
			return nil, fmt.Errorf("line %d: %w", line, ErrKeyBytes)
		}
		if r.byID[id] != nil {
			return nil, fmt.Errorf("line %d: %w", line, ErrDupKey)
		}
		k, err := NewKey(uint8(id), secret, len(fields) == 3)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		r.byID[id] = k
		r.n++
		if r.first == nil {
			r.first = k
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if r.first == nil {
		return nil, ErrNoKeys
	}
	return r, nil
}
