package server

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netmutex/netmutex/internal/wire"
)

// newLoopless returns a server whose loop has not started: the test plays the loop
// (startIsolation, collectIsolations) until it calls the returned stop, which starts the
// loop and closes the server.
func newLoopless(t *testing.T, cfg Config) (*Server, func()) {
	t.Helper()
	s, err := newServer(cfg)
	require.NoError(t, err)
	return s, func() {
		go s.loop()
		require.NoError(t, s.Close())
	}
}

// TestIsolationInfoOnStdinOnly: the client's IsolationInfo reaches the command on its
// standard input, and nowhere else: not in its arguments, not in its environment
// (issue 9, item 2).
func TestIsolationInfoOnStdinOnly(t *testing.T) {
	dir := t.TempDir()
	const marker = "hostile-info-7f3a9c"
	cfg := testConfig(t, filepath.Join(dir, "data"))
	cfg.IsolateCmd = fmt.Sprintf(`cat > %[1]s/stdin; printf '%%s\n' "$0" "$@" > %[1]s/argv; env > %[1]s/env; tr '\0' '\n' < /proc/$$/cmdline > %[1]s/cmdline || true`, dir)
	s, stop := newLoopless(t, cfg)
	defer stop()
	info := marker + " $(touch " + dir + "/pwned) -oProxyCommand=x"
	require.NoError(t, s.runIsolation(isolation{Session: 0xabc, Info: info}))

	got, err := os.ReadFile(filepath.Join(dir, "stdin"))
	require.NoError(t, err)
	assert.Equal(t, info, string(got), "standard input")
	for _, f := range []string{"argv", "env", "cmdline"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if f == "cmdline" && os.IsNotExist(err) {
			continue // no /proc
		}
		require.NoError(t, err)
		assert.NotContains(t, string(b), marker, "IsolationInfo in the command's %s", f)
	}
	env, _ := os.ReadFile(filepath.Join(dir, "env"))
	assert.Contains(t, string(env), "NETMUTEX_SESSION=0000000000000abc")
	assert.NoFileExists(t, filepath.Join(dir, "pwned"))
}

// maxConcurrent reads a file of "+" (a run started) and "-" (a run ended) lines and
// returns how many runs were at most under way at once, and how many started.
func maxConcurrent(t *testing.T, path string) (most, started int) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		switch sc.Text() {
		case "+":
			n++
			started++
			most = max(most, n)
		case "-":
			n--
		default:
			t.Fatalf("bad line %q", sc.Text())
		}
	}
	require.NoError(t, sc.Err())
	return most, started
}

// threads is the process's OS thread count, 0 where /proc is missing.
func threads() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// TestIsolationRunsBounded: 200 isolations with a command that sleeps: never more than
// MaxIsolations run at once, every one runs, in FIFO order, a session queued or running
// is not queued again, and the server's goroutines and threads stay bounded (issue 9,
// item 2: 7,960 children and 7,967 threads).
func TestIsolationRunsBounded(t *testing.T) {
	const sessions, limit = 200, 8
	dir := t.TempDir()
	log := filepath.Join(dir, "runs")
	order := filepath.Join(dir, "order")
	cfg := testConfig(t, filepath.Join(dir, "data"))
	cfg.MaxIsolations = limit
	cfg.IsolateCmd = fmt.Sprintf(`echo + >> %s; printf '%%s\n' "$(cat)" >> %s; sleep 0.02; echo - >> %s`, log, order, log)
	s, stop := newLoopless(t, cfg)
	defer stop()

	goroutines0, threads0 := runtime.NumGoroutine(), threads()
	for i := 1; i <= sessions; i++ {
		s.startIsolation(isolation{Session: uint64(i), Info: strconv.Itoa(i)})
		if i%4 == 0 {
			s.startIsolation(isolation{Session: uint64(i), Info: "duplicate"}) // queued or running: dropped
		}
		require.LessOrEqual(t, s.isoRuns.running, limit)
	}
	assert.Equal(t, sessions-limit, s.isoRuns.queued(), "the rest wait")

	done := map[uint64]bool{}
	maxGoroutines, maxThreads := 0, 0
	deadline := time.Now().Add(60 * time.Second)
	for len(done) < sessions {
		require.True(t, time.Now().Before(deadline), "%d of %d runs done", len(done), sessions)
		time.Sleep(5 * time.Millisecond)
		s.cmds = s.cmds[:0]
		s.collectIsolations()
		for _, c := range s.cmds {
			require.Equal(t, kindIsolationDone, c.kind)
			require.False(t, done[c.Session], "session %d reported twice", c.Session)
			done[c.Session] = true
		}
		require.LessOrEqual(t, s.isoRuns.running, limit)
		maxGoroutines = max(maxGoroutines, runtime.NumGoroutine())
		maxThreads = max(maxThreads, threads())
	}
	s.cmds = s.cmds[:0]
	assert.Zero(t, s.isoRuns.queued())
	assert.Zero(t, s.isoRuns.running)
	assert.Empty(t, s.isoRuns.pending)
	assert.LessOrEqual(t, len(s.isoRuns.queue), 128, "the queue's array is reused")

	most, started := maxConcurrent(t, log)
	t.Logf("at most %d runs at once; goroutines %d -> %d, threads %d -> %d", most, goroutines0, maxGoroutines, threads0, maxThreads)
	assert.Equal(t, sessions, started, "every isolation ran, once")
	assert.LessOrEqual(t, most, limit, "runs at once")
	assert.LessOrEqual(t, maxGoroutines, goroutines0+limit*6, "goroutines")
	if threads0 > 0 {
		assert.LessOrEqual(t, maxThreads, threads0+limit+16, "threads")
	}
	b, err := os.ReadFile(order)
	require.NoError(t, err)
	lines := strings.Fields(string(b))
	require.Len(t, lines, sessions)
	assert.NotContains(t, lines, "duplicate")
	// FIFO: session n starts once a slot is free, when at least n-limit of the sessions
	// queued before it have ended, so at least that many come before it in the file. A
	// queue served out of order (LIFO, a map) would let later sessions overtake.
	for pos, l := range lines {
		n, err := strconv.Atoi(l)
		require.NoError(t, err)
		assert.GreaterOrEqual(t, pos, n-limit, "session %d started at position %d", n, pos)
	}
}

// TestIsolationQueueKeepsKeys: through the network, more isolated sessions than slots:
// every command runs, at most MaxIsolations at once, and each session's key stays held
// until its own command has run.
func TestIsolationQueueKeepsKeys(t *testing.T) {
	const sessions, limit = 6, 2
	dir := t.TempDir()
	log := filepath.Join(dir, "runs")
	cfg := testConfig(t, filepath.Join(dir, "data"))
	cfg.MaxIsolations = limit
	cfg.IsolateCmd = fmt.Sprintf(`echo + >> %s; cat > %s/ran-$NETMUTEX_SESSION; sleep 0.2; echo - >> %s`, log, dir, log)
	s := startServer(t, cfg)
	defer s.Close()
	var ids []uint64
	for i := 0; i < sessions; i++ {
		c := newClient(t, s.Addr())
		c.connect(fmt.Sprintf("host-%d", i))
		requireOp(t, c.lockFrame(fmt.Sprintf("k%d", i), 20*time.Millisecond), wire.OpOK, "LOCK")
		ids = append(ids, c.session)
	}
	other := newClient(t, s.Addr())
	other.connect("other")
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < sessions; i++ {
		key := fmt.Sprintf("k%d", i)
		for {
			_, f := other.lock(key, time.Second)
			if f.Op == wire.OpOK {
				break
			}
			require.Equal(t, wire.OpLocked, f.Op, "%s: %+v", key, f)
			require.True(t, time.Now().Before(deadline), "%s never released", key)
			time.Sleep(10 * time.Millisecond)
		}
		// Released: its session's command has run.
		assert.FileExists(t, filepath.Join(dir, fmt.Sprintf("ran-%016x", ids[i])), "%s released before its command ran", key)
	}
	for s.Stats().IsolationsRun < sessions {
		require.True(t, time.Now().Before(deadline))
		time.Sleep(10 * time.Millisecond)
	}
	most, started := maxConcurrent(t, log)
	assert.Equal(t, sessions, started)
	assert.LessOrEqual(t, most, limit)
	assert.Zero(t, s.Stats().IsolationsFailed)
}

// fakeSSH writes a stand-in for ssh into a new directory and returns the directory. Like
// OpenSSH, it parses options up to the destination (or "--") and runs the command of a
// ProxyCommand option through sh -c; it records its arguments, one a line, in
// dir/args.
func fakeSSH(t *testing.T) string {
	dir := t.TempDir()
	script := `#!/bin/sh
printf '%s\n' "$@" > "$(dirname "$0")/args"
while [ $# -gt 0 ]; do
	case $1 in
	--) break ;;
	-oProxyCommand=*) exec sh -c "${1#-oProxyCommand=}" ;;
	-o) shift; case $1 in ProxyCommand=*) exec sh -c "${1#ProxyCommand=}" ;; esac ;;
	-*) ;;
	*) break ;;
	esac
	shift
done
exit 0
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ssh"), []byte(script), 0o755))
	return dir
}

// TestIsolateExampleRejectsHostileInfo: examples/isolate/isolate.sh, the example the
// server's help points to, run as the server runs it, never lets a hostile IsolationInfo
// execute anything, while the unsafe command it replaces ('ssh "$(cat)" reboot', the
// old help's) does; and it passes a plain host name to ssh after "--".
func TestIsolateExampleRejectsHostileInfo(t *testing.T) {
	example, err := filepath.Abs("../examples/isolate/isolate.sh")
	require.NoError(t, err)
	require.FileExists(t, example)
	bin := fakeSSH(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "pwned")
	run := func(cmd, info string) error {
		c := exec.Command("/bin/sh", "-c", cmd)
		c.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "NETMUTEX_SESSION=0000000000000001")
		c.Stdin = strings.NewReader(info)
		out, err := c.CombinedOutput()
		t.Logf("%q: %v: %s", info, err, out)
		return err
	}
	// The attack works on the old example: the test would see it.
	run(`ssh "$(cat)" reboot`, `-oProxyCommand=sh -c "touch `+marker+`"`)
	require.FileExists(t, marker, "the fake ssh must run a ProxyCommand as ssh does")
	require.NoError(t, os.Remove(marker))

	hostile := []string{
		`-oProxyCommand=sh -c "touch ` + marker + `"`,
		`-oProxyCommand=touch ` + marker,
		"Hostname: -oProxyCommand=touch " + marker,
		"Hostname: -o ProxyCommand=touch " + marker,
		"Hostname: web-1;touch " + marker,
		"Hostname: $(touch " + marker + ")",
		"Hostname: `touch " + marker + "`",
		"web-1 -oProxyCommand=touch " + marker,
		"Hostname: \nHostname: -oProxyCommand=touch " + marker,
		"Hostname: root@web-1",
		"Hostname: " + strings.Repeat("a", 254),
		"",
	}
	for _, info := range hostile {
		require.NoError(t, os.RemoveAll(filepath.Join(bin, "args")))
		assert.Error(t, run(example, info), "refused: %q", info)
		assert.NoFileExists(t, marker, "executed: %q", info)
		assert.NoFileExists(t, filepath.Join(bin, "args"), "ssh ran for %q", info)
	}
	// Dry run: nothing runs either.
	assert.NoError(t, run("NETMUTEX_ISOLATE_DRY_RUN=1 "+example, "Hostname: web-1\nPid: 7"))
	assert.NoFileExists(t, filepath.Join(bin, "args"), "ssh ran in a dry run")

	for info, host := range map[string]string{
		"Hostname: web-1.example.com\nPid: 4242": "web-1.example.com",
		"db-7":                                   "db-7",
	} {
		require.NoError(t, run(example, info))
		args, err := os.ReadFile(filepath.Join(bin, "args"))
		require.NoError(t, err)
		a := strings.Split(strings.TrimSuffix(string(args), "\n"), "\n")
		require.GreaterOrEqual(t, len(a), 3)
		assert.Equal(t, []string{"--", host, "reboot"}, a[len(a)-3:], "ssh's arguments for %q", info)
	}
	assert.NoFileExists(t, marker)
}
