package tests

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFloodToolSmoke runs tests/flood (the flood measurements of issue 9) for one second
// of one flood, so that the tool keeps building and working; the figures are not
// checked. The full run: go run ./tests/flood (tests/README.md).
func TestFloodToolSmoke(t *testing.T) {
	tool := sharedBinary(t, "github.com/netmutex/netmutex/tests/flood", "flood")
	out, err := exec.Command(tool, "-netmutexd", netmutexdBin(t),
		"-floods", "refused", "-duration", "1s", "-quiet", "300ms", "-after", "200ms").CombinedOutput()
	require.NoError(t, err, "flood:\n%s", out)
	s := string(out)
	t.Logf("flood:\n%s", s)
	assert.Contains(t, s, "p99 ms", "no table")
	assert.Contains(t, s, "refused: ", "no notes for the flood")
	assert.Contains(t, s, "LOCKED=", "the flood's LOCKs drew no LOCKED: the handshake or the frames are wrong")
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) > 7 && f[0] == "refused" {
			assert.NotEqual(t, "0", f[6], "the legitimate client made no pairs during the flood")
		}
	}
}
