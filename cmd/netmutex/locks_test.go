package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// locksFixture is netmutexd's GET /locks as the contract has it, keys out of order and
// one holder's IsolationInfo carrying a terminal escape.
const locksFixture = `{"locks":[
 {"key":"nightly-report","fence":9,"session":"00000000000000aa","holder_info":"Hostname: app2\nPid: 77\nCommand: netmutex run nightly-report -- /usr/local/bin/report","expires_in_ms":28140,"waiters":0},
 {"key":"backup","fence":12,"session":"0123abcd0123abcd","holder_info":"Hostname: db1\nPid: 4242","expires_in_ms":2500,"waiters":3},
 {"key":"evil","fence":13,"session":"00000000000000bb","holder_info":"Hostname: x\u001b[2J\tPid: 1\n","expires_in_ms":450,"waiters":1},
 {"key":"anon","fence":14,"session":"00000000000000cc","holder_info":"","expires_in_ms":61000,"waiters":0}
],"sessions":5,"lock_delay_remaining_ms":0}`

func locksServer(t *testing.T, status int, body string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/locks" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestLocksTable(t *testing.T) {
	srv := locksServer(t, http.StatusOK, locksFixture)
	var out, errb strings.Builder
	require.Equal(t, 0, mainStatus([]string{"locks", "-http", srv.Listener.Addr().String()}, &out, &errb), errb.String())
	t.Logf("netmutex locks:\n%s", out.String())
	want := `KEY             FENCE  EXPIRES IN  WAITERS  HOLDER
anon            14     1m1s        0        session 00000000000000cc
backup          12     2.5s        3        Hostname: db1; Pid: 4242
evil            13     450ms       1        Hostname: x\x1b[2J Pid: 1
nightly-report  9      28.1s       0        Hostname: app2; Pid: 77; Command: netmutex run nightly-report -- /usr/local/bin/report

4 locks, 5 sessions
`
	assert.Equal(t, want, out.String())
	assert.NotContains(t, out.String(), "\x1b", "a holder's escape sequence reached the terminal")

	// A URL works as well as host:port, and the lock-delay is shown.
	delayed := locksServer(t, http.StatusOK, `{"locks":[],"sessions":1,"lock_delay_remaining_ms":42000}`)
	out.Reset()
	require.Equal(t, 0, mainStatus([]string{"locks", "-http", delayed.URL + "/whatever"}, &out, &errb))
	assert.Equal(t, "KEY  FENCE  EXPIRES IN  WAITERS  HOLDER\n\n0 locks, 1 session; lock-delay in force for 42s more: no lock is granted until it ends\n", out.String())
}

func TestLocksJSON(t *testing.T) {
	srv := locksServer(t, http.StatusOK, locksFixture)
	var out, errb strings.Builder
	require.Equal(t, 0, mainStatus([]string{"locks", "-json", "-http", srv.URL}, &out, &errb), errb.String())
	var got, want any
	require.NoError(t, json.Unmarshal([]byte(out.String()), &got))
	require.NoError(t, json.Unmarshal([]byte(locksFixture), &want))
	assert.Equal(t, want, got)
	assert.Contains(t, out.String(), "\n  \"locks\": [", "indented")
}

func TestLocksErrors(t *testing.T) {
	// Nothing listens: a clear error and 69.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	var out, errb strings.Builder
	assert.Equal(t, exitUnavailable, mainStatus([]string{"locks", "-http", addr}, &out, &errb))
	assert.Contains(t, errb.String(), "cannot reach netmutexd's HTTP endpoint")
	assert.Empty(t, out.String())

	errb.Reset()
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	assert.Equal(t, exitUnavailable, mainStatus([]string{"locks", "-http", notFound.URL}, &out, &errb))
	assert.Contains(t, errb.String(), "404")
	assert.Contains(t, errb.String(), "without /locks")

	errb.Reset()
	broken := locksServer(t, http.StatusOK, `<html>not json</html>`)
	assert.Equal(t, exitProtocol, mainStatus([]string{"locks", "-http", broken.URL}, &out, &errb))
	assert.Contains(t, errb.String(), "not the expected JSON")

	errb.Reset()
	failing := locksServer(t, http.StatusServiceUnavailable, `{"error":"not ready"}`)
	assert.Equal(t, exitUnavailable, mainStatus([]string{"locks", "-http", failing.URL}, &out, &errb))
	assert.Contains(t, errb.String(), "503")

	assert.Equal(t, exitUsage, mainStatus([]string{"locks", "-http", "ftp://x"}, &out, &errb))
	assert.Equal(t, exitUsage, mainStatus([]string{"locks", "extra"}, &out, &errb))
	assert.Empty(t, out.String())
}

func TestOneLine(t *testing.T) {
	assert.Equal(t, "Hostname: a; Pid: 1", oneLine("Hostname: a\r\nPid: 1\n"))
	assert.Equal(t, `a\x1b[31mb c\x00`, oneLine("a\x1b[31mb\tc\x00"))
	assert.Equal(t, `bad\xff héllo`, oneLine("bad\xff héllo"))
	assert.Equal(t, `a\u00a0b`, oneLine("a\u00a0b"), "invisible spaces shown")
}
