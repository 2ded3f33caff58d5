package tests

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// randomKey returns 32 random bytes in hex: the secret of one key file line.
func randomKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// keyLine is one key file line: "ID HEX", with " admin" if admin.
func keyLine(id int, secret string, admin bool) string {
	l := fmt.Sprintf("%d %s", id, secret)
	if admin {
		l += " admin"
	}
	return l
}

// writeKeyFile writes lines as a key file (mode 0600) in a fresh temp dir and returns
// its path.
func writeKeyFile(t testing.TB, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.WriteFile(p, []byte("# netmutex test keys\n"+strings.Join(lines, "\n")+"\n"), 0o600))
	return p
}

// newKeyFile writes a key file with one fresh random key, id 1: what the tests that run
// "with keys on" give to the server and to every client.
func newKeyFile(t testing.TB) string {
	t.Helper()
	return writeKeyFile(t, keyLine(1, randomKey(), false))
}
