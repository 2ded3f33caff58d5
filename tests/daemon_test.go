package tests

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "netmutex-tests-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sharedBinDir = dir
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { os.RemoveAll(dir) }))
}

// sharedBinDir holds the binaries built once for the whole run (sharedBinary).
var sharedBinDir string

var (
	sharedMu    sync.Mutex
	sharedBuilt = map[string]string{} // package -> binary
)

// sharedBinary builds the main package pkg once per test process and returns its path:
// most tests here run netmutexd, and one build serves them all.
func sharedBinary(t testing.TB, pkg, name string) string {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if bin, ok := sharedBuilt[pkg]; ok {
		return bin
	}
	bin := buildBinary(t, sharedBinDir, pkg, name)
	sharedBuilt[pkg] = bin
	return bin
}

// netmutexdBin is the netmutexd binary of this tree, built once per run, or the one
// NETMUTEXD_BIN names (to run the suite against another build, e.g. an older one).
func netmutexdBin(t testing.TB) string {
	if bin := os.Getenv("NETMUTEXD_BIN"); bin != "" {
		return bin
	}
	return sharedBinary(t, "github.com/netmutex/netmutex/cmd/netmutexd", "netmutexd")
}

// buildBinary builds the main package pkg into dir, with the go command found on PATH
// (the one `go test` puts first), and returns its path.
func buildBinary(t testing.TB, dir, pkg, name string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	require.NoError(t, err, "no go command on PATH")
	out := filepath.Join(dir, name)
	b, err := exec.Command(goTool, "build", "-o", out, pkg).CombinedOutput()
	require.NoError(t, err, "go build %s\n%s", pkg, b)
	return out
}

// daemon is netmutexd running as a separate process, restartable on the same address
// and data directory.
type daemon struct {
	t       testing.TB
	bin     string
	dataDir string
	args    []string
	addr    string // fixed after the first start
	logPath string

	cmd    *exec.Cmd
	exited chan struct{}
	logMu  sync.Mutex
	log    *os.File
	starts int
}

// errExited: the server exited at once (e.g. its port was still taken).
var errExited = errors.New("netmutexd exited")

// servingRE finds the address in the INFO line the server logs once it serves; the
// server must run at -log-level info or below.
var servingRE = regexp.MustCompile(`msg="netmutexd serving" addr=(\S+)`)

func newDaemon(t testing.TB, bin string, args ...string) *daemon {
	dir := t.TempDir()
	d := &daemon{t: t, bin: bin, dataDir: filepath.Join(dir, "data"), args: args, logPath: filepath.Join(dir, "netmutexd.log")}
	f, err := os.Create(d.logPath)
	require.NoError(t, err)
	d.log = f
	t.Cleanup(func() {
		d.kill()
		f.Close()
	})
	return d
}

// start runs the server and returns once it serves. The first start picks a free port;
// later starts reuse it.
func (d *daemon) start() {
	d.t.Helper()
	listen := d.addr
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	args := append([]string{"-listen", listen, "-data", d.dataDir, "-http", ""}, d.args...) // no HTTP: daemons run side by side
	var lastErr error
	for try := 0; try < 20; try++ { // the port may linger for a moment after a kill
		addr, err := d.startOnce(args)
		if err == nil {
			d.addr = addr
			d.starts++
			return
		}
		lastErr = err
		if !errors.Is(err, errExited) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Fatalf("netmutexd did not start: %v (log %s)", lastErr, d.logPath)
}

func (d *daemon) startOnce(args []string) (string, error) {
	cmd := exec.Command(d.bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	serving := make(chan string, 1)
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			d.logMu.Lock()
			fmt.Fprintln(d.log, line)
			d.logMu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				select {
				case serving <- m[1]:
				default:
				}
			}
		}
		cmd.Wait()
		close(exited)
	}()
	select {
	case addr := <-serving:
		d.cmd, d.exited = cmd, exited
		return addr, nil
	case <-exited:
		return "", fmt.Errorf("%w: %v", errExited, cmd.ProcessState)
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
		return "", fmt.Errorf("no 'serving' line within 10s")
	}
}

// kill stops the server with SIGKILL (a crash) and waits for it to be gone.
func (d *daemon) kill() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
	d.cmd = nil
}
