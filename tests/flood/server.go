// The measured side: netmutexd as a process, the legitimate client and its latencies,
// and the server's RSS and CPU read from /proc.

package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/netmutex/netmutex"
)

type server struct {
	cmd     *exec.Cmd
	pid     int
	addr    string
	logPath string
	done    chan struct{}
}

func startServer(bin, logPath string, args []string) (*server, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	s := &server{cmd: cmd, pid: cmd.Process.Pid, logPath: logPath, done: make(chan struct{})}
	serving := make(chan string, 1)
	go func() {
		defer close(s.done)
		defer logf.Close()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if m := servingRE.FindStringSubmatch(line); m != nil {
				select {
				case serving <- m[1]:
				default:
				}
			}
		}
		cmd.Wait()
	}()
	select {
	case s.addr = <-serving:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("netmutexd exited at start (log %s)", logPath)
	case <-time.After(10 * time.Second):
		s.kill()
		return nil, fmt.Errorf("netmutexd did not serve within 10s (log %s)", logPath)
	}
}

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *server) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

type sample struct {
	at  time.Time
	d   time.Duration
	err bool
}

type legit struct {
	nm      *netmutex.NetMutex
	mu      sync.Mutex
	samples []sample
	quit    chan struct{}
	done    chan struct{}
}

// startLegit opens the legitimate client and starts its loop of Lock+Unlock pairs.
func startLegit(addr, keyFile string) (*legit, error) {
	nm, err := netmutex.Open(20, 100*time.Millisecond, []string{addr}, &netmutex.Options{KeyFile: keyFile, IsolationInfo: "legit"})
	if err != nil {
		return nil, fmt.Errorf("legitimate client: %w", err)
	}
	lg := &legit{nm: nm, quit: make(chan struct{}), done: make(chan struct{})}
	go lg.loop()
	return lg, nil
}

func (lg *legit) loop() {
	defer close(lg.done)
	var l netmutex.Lock
	for n := 0; ; n++ {
		select {
		case <-lg.quit:
			return
		default:
		}
		key := "legit-" + strconv.Itoa(n%64)
		start := time.Now()
		// 100 attempts of 50ms: a pair gives up after 5s at most.
		err := lg.nm.Lock(100, 50*time.Millisecond, &l, key, 10*time.Second)
		if err == nil {
			err = lg.nm.Unlock(100, 50*time.Millisecond, &l)
		}
		d := time.Since(start)
		lg.mu.Lock()
		lg.samples = append(lg.samples, sample{start, d, err != nil})
		lg.mu.Unlock()
		if err != nil && !errors.Is(err, netmutex.ErrTooMuchRetries) && !errors.Is(err, netmutex.ErrLocked) {
			// A lost session: reopen is not what a legitimate client would wait for here;
			// count it and go on (the error column shows it).
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(*flagInterval)
	}
}

func (lg *legit) stop() []sample {
	close(lg.quit)
	<-lg.done
	lg.nm.Close(2, 100*time.Millisecond)
	lg.mu.Lock()
	defer lg.mu.Unlock()
	return lg.samples
}

type stats struct {
	n, errs       int
	p50, p99, max time.Duration
}

// summarize takes the pairs that started in [from, to).
func summarize(samples []sample, from, to time.Time) stats {
	var ds []time.Duration
	var s stats
	for _, x := range samples {
		if x.at.Before(from) || !x.at.Before(to) {
			continue
		}
		s.n++
		if x.err {
			s.errs++
		}
		ds = append(ds, x.d)
	}
	if len(ds) == 0 {
		return s
	}
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	s.p50, s.p99, s.max = q(0.50), q(0.99), ds[len(ds)-1]
	return s
}

func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
	}
	return -1
}

// cpuTicks is the process's user+system time in clock ticks.
func cpuTicks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

type rssWatch struct {
	mu   sync.Mutex
	max  int64
	quit chan struct{}
	done chan struct{}
}

func newRSSWatch(pid int) *rssWatch {
	w := &rssWatch{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-w.quit:
				return
			case <-t.C:
			}
			v := vmRSS(pid)
			w.mu.Lock()
			w.max = max(w.max, v)
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *rssWatch) reset() { w.mu.Lock(); w.max = 0; w.mu.Unlock() }

func (w *rssWatch) peak() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max
}

func (w *rssWatch) stop() { close(w.quit); <-w.done }
