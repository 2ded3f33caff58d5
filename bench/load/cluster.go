// netmutexd as processes of their own, for `-cluster N`: one server, or N nodes of a
// cluster replicated with Raft, on loopback, built from this tree; the NetMutex
// instances load the leader.

package load

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
)

// netmutexdPkg is the server's main package.
const netmutexdPkg = "github.com/netmutex/netmutex/cmd/netmutexd"

// BuildNetmutexd builds netmutexd into dir with the go command and returns its path.
func BuildNetmutexd(dir string) (string, error) {
	goTool, err := exec.LookPath("go") // the one `go run` and `go test` put first on PATH
	if err != nil {
		return "", fmt.Errorf("building netmutexd: %w", err)
	}
	bin := filepath.Join(dir, "netmutexd")
	if out, err := exec.Command(goTool, "build", "-o", bin, netmutexdPkg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", netmutexdPkg, err, out)
	}
	return bin, nil
}

// Netmutexd is netmutexd running as n processes (n == 1: a single server; more: the
// nodes of a cluster) and the NetMutex instances of the run, on the leader.
type Netmutexd struct {
	*Netmutex
	nodes  []*daemonProc
	dir    string
	leader int
}

// clusterIP is the loopback IP of node i, one per node as in a real cluster (the cluster
// tests use 127.0.0.1x).
func clusterIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(21 + i)}) }

// leaderWait bounds the first election: a heartbeat timeout (300ms), as much again at
// most, and a barrier.
const leaderWait = 15 * time.Second

// StartNetmutexd builds nothing: it runs bin as n processes in a fresh temporary
// directory, waits for a leader, and opens o.Conns NetMutex instances to it with o's
// keys (the servers get the same key file). Raft's log is fsynced, its default.
func StartNetmutexd(o *Options, bin string, n int) (*Netmutexd, error) {
	if o.Addr != "" {
		return nil, errors.New("-addr names an external server: netmutexd processes are started by the bench")
	}
	dir, err := os.MkdirTemp("", "netmutex-bench-netmutexd-")
	if err != nil {
		return nil, err
	}
	s := &Netmutexd{dir: dir}
	co := *o // the clients' options: this key file, none made by StartNetmutex
	co.Sealed = false
	if o.Sealed {
		secret := make([]byte, seal.KeySize)
		rand.Read(secret)
		co.KeyFile = filepath.Join(dir, "keys")
		if err := os.WriteFile(co.KeyFile, fmt.Appendf(nil, "1 %x\n", secret), 0o600); err != nil {
			s.Close()
			return nil, err
		}
	}
	common := []string{"-http", "", "-max-ttl", max(time.Minute, o.TTL).String(), "-log-level", "info"}
	if co.KeyFile != "" {
		common = append(common, "-key-file", co.KeyFile)
	}
	if n == 1 {
		d, err := startDaemon(bin, filepath.Join(dir, "n1"), append([]string{"-listen", "127.0.0.1:0"}, common...))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.nodes = append(s.nodes, d)
	} else {
		var members []string
		for i := range n {
			udp, tcp, err := freeAddrs(clusterIP(i))
			if err != nil {
				s.Close()
				return nil, err
			}
			members = append(members, fmt.Sprintf("n%d=%s/%s", i+1, udp, tcp))
		}
		for i := range n {
			args := append([]string{"-name", fmt.Sprintf("n%d", i+1), "-initial-cluster", strings.Join(members, ",")}, common...)
			d, err := startDaemon(bin, filepath.Join(dir, fmt.Sprintf("n%d", i+1)), args)
			if err != nil {
				s.Close()
				return nil, err
			}
			s.nodes = append(s.nodes, d)
		}
	}
	if s.leader, err = s.waitLeader(); err != nil {
		s.Close()
		return nil, err
	}
	co.Addr = s.nodes[s.leader].addr
	if s.Netmutex, err = StartNetmutex(&co); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// waitLeader returns the node that leads: the only one of a single server, else the one
// whose last role line says so.
func (s *Netmutexd) waitLeader() (int, error) {
	if len(s.nodes) == 1 {
		return 0, nil
	}
	deadline := time.Now().Add(leaderWait)
	for time.Now().Before(deadline) {
		leader, leaders := -1, 0
		for i, d := range s.nodes {
			if d.leading() {
				leader, leaders = i, leaders+1
			}
		}
		if leaders == 1 {
			return leader, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return -1, fmt.Errorf("no leader within %v; the last lines of n1's log:\n%s", leaderWait, s.nodes[0].tail())
}

// Name is "netmutexd" for one process, "netmutex-raftN" for a cluster of N.
func (s *Netmutexd) Name() string {
	if len(s.nodes) == 1 {
		return "netmutexd"
	}
	return fmt.Sprintf("netmutex-raft%d", len(s.nodes))
}

// Note says how it was set up.
func (s *Netmutexd) Note() string {
	sealed := ""
	if s.keyFile != "" {
		sealed = ", sealed datagrams"
	}
	if len(s.nodes) == 1 {
		return fmt.Sprintf("netmutexd as a process on %s (default config), %d NetMutex%s", s.addr, len(s.nms), sealed)
	}
	return fmt.Sprintf("%d netmutexd processes replicated with Raft (fsync on, default config), leader %s; %d NetMutex%s",
		len(s.nodes), s.addr, len(s.nms), sealed)
}

// ServerCPU is the CPU time of every netmutexd process.
func (s *Netmutexd) ServerCPU() (time.Duration, bool) {
	var sum time.Duration
	for _, d := range s.nodes {
		cpu, ok := ProcCPU(d.cmd.Process.Pid)
		if !ok {
			return 0, false
		}
		sum += cpu
	}
	return sum, true
}

// Close closes the NetMutex instances, stops every process (SIGTERM, then SIGKILL after
// 10s) and removes the directory.
func (s *Netmutexd) Close() error {
	var errs []error
	if s.Netmutex != nil {
		errs = append(errs, s.Netmutex.Close())
	}
	for _, d := range s.nodes {
		errs = append(errs, d.stop())
	}
	errs = append(errs, os.RemoveAll(s.dir))
	return errors.Join(errs...)
}

// freeAddrs returns a UDP and a TCP address on ip, both free a moment ago; nothing else
// binds these IPs.
func freeAddrs(ip netip.Addr) (udp, tcp string, err error) {
	u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return "", "", err
	}
	defer u.Close()
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return "", "", err
	}
	defer l.Close()
	return u.LocalAddr().String(), l.Addr().String(), nil
}

// daemonProc is one netmutexd process; its log is read for its address and its role.
type daemonProc struct {
	cmd    *exec.Cmd
	addr   string
	exited chan struct{}

	mu    sync.Mutex
	role  string   // "leading", "no longer leading" or ""
	lines []string // the last lines of its log, for errors
}

var (
	servingRE = regexp.MustCompile(`msg="netmutexd serving" addr=(\S+)`)
	roleRE    = regexp.MustCompile(`msg="cluster: (leading|no longer leading)"`)
)

// startDaemon starts bin with -data dataDir and args, and returns once it serves.
func startDaemon(bin, dataDir string, args []string) (*daemonProc, error) {
	cmd := exec.Command(bin, append([]string{"-data", dataDir}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemonProc{cmd: cmd, exited: make(chan struct{})}
	serving := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.lines = append(d.lines[max(0, len(d.lines)-19):], line)
			if m := roleRE.FindStringSubmatch(line); m != nil {
				d.role = m[1]
			}
			d.mu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				select {
				case serving <- m[1]:
				default:
				}
			}
		}
		cmd.Wait()
		close(d.exited)
	}()
	select {
	case d.addr = <-serving:
		return d, nil
	case <-d.exited:
		return nil, fmt.Errorf("netmutexd exited at once (%v):\n%s", cmd.ProcessState, d.tail())
	case <-time.After(10 * time.Second):
		d.stop()
		return nil, fmt.Errorf("netmutexd: no 'serving' line within 10s:\n%s", d.tail())
	}
}

func (d *daemonProc) leading() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.role == "leading"
}

func (d *daemonProc) tail() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.lines, "\n")
}

// stop stops the process cleanly, or kills it after 10s.
func (d *daemonProc) stop() error {
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return nil
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		return errors.New("netmutexd did not stop within 10s of SIGTERM: killed")
	}
}
