package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// bin is netmutexd built from this tree, once for the package's tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "netmutexd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "netmutexd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runOnce runs netmutexd to its end and returns its standard output, its standard
// error and its exit status.
func runOnce(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	require.NoError(t, ctx.Err(), "netmutexd %q did not exit; stderr:\n%s", args, e.String())
	if err != nil {
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, "netmutexd %q", args)
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// lines splits s into its lines, without the trailing empty one.
func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// daemon is a netmutexd that serves until the test signals it.
type daemon struct {
	t       *testing.T
	cmd     *exec.Cmd
	serving string // the "netmutexd serving" log line
	exited  chan struct{}

	mu  sync.Mutex
	log []string
}

// servingRE finds the line netmutexd logs once it serves, in either log format.
var servingRE = regexp.MustCompile(`netmutexd serving`)

// startDaemon starts netmutexd with args (on a free loopback port, without HTTP, unless
// args say otherwise) and returns once it serves.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	args = append([]string{"-listen", "127.0.0.1:0", "-http", ""}, args...)
	d := &daemon{t: t, cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	stderr, err := d.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, d.cmd.Start())
	serving := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.log = append(d.log, line)
			d.mu.Unlock()
			if servingRE.MatchString(line) {
				select {
				case serving <- line:
				default:
				}
			}
		}
		d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			d.cmd.Process.Kill()
			<-d.exited
		}
	})
	select {
	case d.serving = <-serving:
	case <-d.exited:
		t.Fatalf("netmutexd %q exited at start: %v\n%s", args, d.cmd.ProcessState, d.logText())
	case <-time.After(10 * time.Second):
		t.Fatalf("netmutexd %q did not serve within 10s\n%s", args, d.logText())
	}
	return d
}

func (d *daemon) logText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.log, "\n")
}

func (d *daemon) logLines() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.log...)
}

// stop sends sig and waits for netmutexd to exit; it returns the exit status.
func (d *daemon) stop(sig os.Signal) int {
	d.t.Helper()
	require.NoError(d.t, d.cmd.Process.Signal(sig))
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.t.Fatalf("netmutexd did not stop within 10s of %v\n%s", sig, d.logText())
	}
	return d.cmd.ProcessState.ExitCode()
}

// TestBadFlags: each bad flag gives one line on standard error that names the flag and
// the rule, nothing on standard output, and exit status 2.
func TestBadFlags(t *testing.T) {
	const durRule = "from 1ms to less than 1193h2m47.296s (2^32 ms)"
	const capRule = "0 or more"
	const spinRule = "from 0 (off) to 10ms"
	for _, c := range []struct {
		args []string
		want []string // substrings of the one line
	}{
		{[]string{"-session-timeout", "0"}, []string{"-session-timeout", durRule}},
		{[]string{"-max-ttl", "-1"}, []string{"-max-ttl", durRule}},
		{[]string{"-max-ttl", "0s"}, []string{"-max-ttl", durRule}},
		{[]string{"-max-ttl", "soon"}, []string{"-max-ttl", durRule}},
		{[]string{"-retransmit-window", "4294967296ms"}, []string{"-retransmit-window", durRule}},
		{[]string{"-isolate-timeout", "999us"}, []string{"-isolate-timeout", durRule}},
		{[]string{"-spin-wait", "-1ns"}, []string{"-spin-wait", spinRule}},
		{[]string{"-spin-wait", "11ms"}, []string{"-spin-wait", spinRule}},
		{[]string{"-spin-wait", "fast"}, []string{"-spin-wait", spinRule}},
		{[]string{"-id", "0"}, []string{"-id", "from 1 to 65535"}},
		{[]string{"-id", "65536"}, []string{"-id", "from 1 to 65535"}},
		{[]string{"-id", "one"}, []string{"-id", "from 1 to 65535"}},
		{[]string{"-log-level", "verbose"}, []string{"-log-level", "debug, info, warn or error"}},
		{[]string{"-log-level", "info+2"}, []string{"-log-level", "debug, info, warn or error"}},
		{[]string{"-log-format", "xml"}, []string{"-log-format", "text or json"}},
		{[]string{"-max-sessions", "-1"}, []string{"-max-sessions", capRule}},
		{[]string{"-max-sessions-per-addr", "-1"}, []string{"-max-sessions-per-addr", capRule}},
		{[]string{"-max-locks-per-session", "-1"}, []string{"-max-locks-per-session", capRule}},
		{[]string{"-max-locks", "many"}, []string{"-max-locks", capRule}},
		{[]string{"-connect-rate", "-5"}, []string{"-connect-rate", capRule}},
		{[]string{"-max-isolations", "-1"}, []string{"-max-isolations", capRule}},
		{[]string{"-max-waiters-per-key", "-1"}, []string{"-max-waiters-per-key", capRule}},
		{[]string{"-max-waiters-per-session", "-1"}, []string{"-max-waiters-per-session", capRule}},
		{[]string{"-http", "localhost"}, []string{"-http", "host:port", "or empty"}},
		{[]string{"-http", "127.0.0.1:65536"}, []string{"-http", "host:port"}},
		{[]string{"-listen", ""}, []string{"-listen", "host:port"}},
		{[]string{"-listen", "127.0.0.1"}, []string{"-listen", "host:port"}},
		{[]string{"-data", ""}, []string{"-data", "must not be empty"}},
		{[]string{"-insecure=maybe"}, []string{"-insecure", "true or false"}},
		{[]string{"-max-ttl"}, []string{"-max-ttl", "needs an argument"}},
		{[]string{"-no-such-flag"}, []string{"-no-such-flag", "not defined"}},
		{[]string{"serve"}, []string{"unexpected arguments", "flags only"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			t.Parallel()
			// Good flags first, so a bad flag let through would not touch the user's
			// data directory or port; the flag under test comes last and wins.
			args := append([]string{"-data", t.TempDir(), "-listen", "127.0.0.1:0", "-http", ""}, c.args...)
			stdout, stderr, code := runOnce(t, args...)
			assert.Equal(t, 2, code, "exit status; stderr:\n%s", stderr)
			assert.Empty(t, stdout)
			ls := lines(stderr)
			require.Len(t, ls, 1, "want one line, got:\n%s", stderr)
			assert.True(t, strings.HasPrefix(ls[0], "netmutexd: "), ls[0])
			for _, w := range c.want {
				assert.Contains(t, ls[0], w)
			}
			assert.NotRegexp(t, `[A-Z][a-z]+[A-Z][a-z]+`, ls[0], "names a Go identifier, not a flag")
			assert.NotContains(t, ls[0], "server:")
		})
	}
}

// TestHelp: -h prints the usage, every flag and the signals, and exits 0.
func TestHelp(t *testing.T) {
	stdout, stderr, code := runOnce(t, "-h")
	assert.Equal(t, 0, code)
	assert.Empty(t, stderr)
	for _, f := range []string{"-listen", "-http", "-data", "-max-ttl", "-session-timeout", "-retransmit-window",
		"-isolate-cmd", "-isolate-timeout", "-id", "-log-level", "-log-format", "-key-file", "-insecure", "-version",
		"-max-sessions", "-max-sessions-per-addr", "-max-locks-per-session", "-max-locks", "-connect-rate",
		"-max-isolations", "-max-waiters-per-key", "-max-waiters-per-session", "-spin-wait"} {
		assert.Regexp(t, `\n  `+f+`[ \n]`, stdout, "flag %s", f)
	}
	assert.Contains(t, stdout, "SIGHUP")
	assert.Contains(t, stdout, "(default 127.0.0.1:15664)")
	assert.Contains(t, stdout, "(default 100000)") // -max-sessions, from server.DefaultConfig
}

// TestSpinWait: -spin-wait at its longest is accepted, the server answers as usual, and
// it still stops cleanly.
func TestSpinWait(t *testing.T) {
	d := startDaemon(t, "-data", t.TempDir(), "-spin-wait", "10ms")
	m := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(d.serving)
	require.NotNil(t, m, d.serving)
	conn, err := net.Dial("udp", m[1])
	require.NoError(t, err)
	defer conn.Close()
	buf := make([]byte, 2048)
	for id := uint64(1); id <= 20; id++ {
		b := wire.BeginDatagram(nil, wire.Header{})
		b = wire.FinishDatagram(wire.AppendEmpty(b, wire.OpPing, id))
		_, err := conn.Write(b)
		require.NoError(t, err)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(buf)
		require.NoError(t, err, "PING %d: no reply", id)
		r, err := wire.Parse(buf[:n], true)
		require.NoError(t, err)
		var f wire.Frame
		require.True(t, r.Next(&f))
		require.Equal(t, wire.OpPong, f.Op, "PING %d: %+v", id, f)
		require.Equal(t, id, f.ID)
	}
	assert.Equal(t, 0, d.stop(syscall.SIGTERM), "exit status\n%s", d.logText())
}

// TestVersion: -version prints one line with the version and the Go version, exit 0.
func TestVersion(t *testing.T) {
	stdout, stderr, code := runOnce(t, "-version")
	assert.Equal(t, 0, code)
	assert.Empty(t, stderr)
	assert.Regexp(t, `^netmutexd \S+ go1\.\S+ \S+/\S+\n$`, stdout)
	assert.Contains(t, stdout, " "+runtime.Version()+" ")
}

// TestSignalsStopCleanly: SIGHUP, SIGTERM and SIGINT each stop netmutexd cleanly, exit 0,
// and the next start on the same data directory has no lock-delay.
func TestSignalsStopCleanly(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			data := t.TempDir()
			d := startDaemon(t, "-data", data)
			assert.Contains(t, d.serving, "lock_delay=false")
			assert.Equal(t, 0, d.stop(sig), "exit status\n%s", d.logText())
			log := d.logText()
			assert.Contains(t, log, fmt.Sprintf(`msg=stopping signal=%s`, sig.String()))
			assert.Regexp(t, `msg="netmutexd stopped" clean=true locks_held=false`, log)

			again := startDaemon(t, "-data", data)
			assert.Contains(t, again.serving, "lock_delay=false", "the stop by %v was not clean", sig)
			assert.Equal(t, 0, again.stop(syscall.SIGTERM))
		})
	}
}

// TestLogFormatJSON: -log-format json writes one JSON object a line; -log-level debug
// is accepted.
func TestLogFormatJSON(t *testing.T) {
	d := startDaemon(t, "-data", t.TempDir(), "-log-format", "json", "-log-level", "debug")
	assert.Equal(t, 0, d.stop(syscall.SIGTERM))
	ls := d.logLines()
	require.NotEmpty(t, ls)
	msgs := map[string]map[string]any{}
	for _, l := range ls {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &rec), "not a JSON line: %s", l)
		assert.Contains(t, rec, "time")
		assert.Contains(t, rec, "level")
		msg, _ := rec["msg"].(string)
		msgs[msg] = rec
	}
	require.Contains(t, msgs, "netmutexd serving")
	assert.Equal(t, false, msgs["netmutexd serving"]["lock_delay"])
	require.Contains(t, msgs, "netmutexd stopped")
	assert.Equal(t, true, msgs["netmutexd stopped"]["clean"])
}

// TestStartErrors: a server that cannot start says why in one line, without the server
// package's prefix repeated, and exits 1.
func TestStartErrors(t *testing.T) {
	data := t.TempDir()
	d := startDaemon(t, "-data", data)
	defer d.stop(syscall.SIGTERM)

	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"data directory in use", []string{"-listen", "127.0.0.1:0", "-http", "", "-data", data}, []string{data, "in use"}},
		{"insecure listen", []string{"-listen", "0.0.0.0:0", "-http", "", "-data", t.TempDir()}, []string{"-listen 0.0.0.0:0", "-key-file", "-insecure"}},
		{"missing key file", []string{"-key-file", filepath.Join(t.TempDir(), "keys"), "-listen", "127.0.0.1:0", "-http", "", "-data", t.TempDir()}, []string{"-key-file", "no such file"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code := runOnce(t, c.args...)
			assert.Equal(t, 1, code, "exit status; stderr:\n%s", stderr)
			assert.Empty(t, stdout)
			ls := lines(stderr)
			require.Len(t, ls, 1, "want one line, got:\n%s", stderr)
			assert.True(t, strings.HasPrefix(ls[0], "netmutexd: "), ls[0])
			assert.NotContains(t, ls[0], "server:")
			assert.NotContains(t, ls[0], "Insecure")
			for _, w := range c.want {
				assert.Contains(t, ls[0], w)
			}
		})
	}
}

// TestFailedStartNoLockDelay (issue 10): a start that fails because an address it must
// bind is taken (the UDP -listen, or the TCP -http) grants nothing, so the next start on
// the same data directory must have no lock-delay.
func TestFailedStartNoLockDelay(t *testing.T) {
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer udp.Close()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer tcp.Close()

	for _, c := range []struct {
		name  string
		fresh bool // a new data directory, else one with a clean stop behind it
		args  []string
	}{
		{"udp taken, new data directory", true, []string{"-listen", udp.LocalAddr().String(), "-http", ""}},
		{"udp taken, after a clean stop", false, []string{"-listen", udp.LocalAddr().String(), "-http", ""}},
		{"http taken, after a clean stop", false, []string{"-listen", "127.0.0.1:0", "-http", tcp.Addr().String()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := t.TempDir()
			if !c.fresh {
				d := startDaemon(t, "-data", data)
				require.Equal(t, 0, d.stop(syscall.SIGTERM))
			}
			stdout, stderr, code := runOnce(t, append(c.args, "-data", data)...)
			assert.Equal(t, 1, code, "a start on a taken address; stderr:\n%s", stderr)
			assert.Empty(t, stdout)
			ls := lines(stderr)
			require.NotEmpty(t, ls)
			last := ls[len(ls)-1]
			assert.Contains(t, last, "address already in use")
			assert.True(t, strings.HasPrefix(last, "netmutexd: "), last)
			assert.NotContains(t, last, "server:")

			d := startDaemon(t, "-data", data)
			assert.Contains(t, d.serving, "lock_delay=false",
				"a failed start left the data directory unclean, so this start waits out a lock-delay: server.New must bind (UDP and HTTP) before openStore records the start")
			assert.Equal(t, 0, d.stop(syscall.SIGTERM))
		})
	}
}

// httpServingRE finds the address of the HTTP server in its log line.
var httpServingRE = regexp.MustCompile(`msg="http serving" addr=(\S+)`)

// TestHTTP: -http serves /healthz and /metrics at the address it logs; the default is
// 127.0.0.1:15664 and an empty -http serves none.
func TestHTTP(t *testing.T) {
	d := startDaemon(t, "-data", t.TempDir(), "-http", "127.0.0.1:0")
	var addr string
	require.Eventually(t, func() bool {
		m := httpServingRE.FindStringSubmatch(d.logText())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	}, 5*time.Second, 10*time.Millisecond, "no 'http serving' line:\n%s", d.logText())
	hc := &http.Client{Timeout: 10 * time.Second} // a hung handler fails the test, not CI's clock
	for _, path := range []string{"/healthz", "/metrics"} {
		resp, err := hc.Get("http://" + addr + path)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", path, body)
		if path == "/metrics" {
			assert.Contains(t, string(body), "netmutex_")
		}
	}
	assert.Equal(t, 0, d.stop(syscall.SIGTERM))

	none := startDaemon(t, "-data", t.TempDir()) // startDaemon passes -http ""
	assert.Equal(t, 0, none.stop(syscall.SIGTERM))
	assert.NotContains(t, none.logText(), "http serving")
}
