// Command flood measures what the floods of issue 9 cost a legitimate client: it starts
// netmutexd as a separate process on 127.0.0.1, runs one legitimate client doing
// Lock+Unlock pairs in a loop (one goroutine, each pair timed), and for each flood in
// turn records the pairs' p50/p99/max during the flood and the server's RSS before, at
// the peak and some seconds after. Every flood comes from raw UDP sockets with
// hand-crafted datagrams (internal/wire, sealed with internal/seal where the flood
// needs a key).
//
//	go run ./tests/flood                       # every flood, 10s each
//	go run ./tests/flood -floods refused,mass -duration 5s -after 2s
//	go run ./tests/flood -keys                 # the server and the floods with keys
//
// Floods (-floods, comma-separated, in this order by default):
//
//	refused       refused LOCKs with descending ids, 300 datagrams/s from one session
//	              (a real COOKIE+CONNECT handshake), each full of LOCK frames for a key
//	              another client holds
//	connect       14 MB of CONNECTs from 16 sockets: a third never answers the cookie,
//	              a third sends it back (a session each, up to the caps), a third sends
//	              a bogus one; counts the sessions granted
//	mass          one session locks as many keys as it can as fast as it can (the cap is
//	              65,536 per session), with a short TTL, and lets them expire together;
//	              again with a fresh session until the flood ends
//	multiconnect  as many CONNECTs as fit in one datagram, 1000 datagrams/s
//	garbage       random bytes and datagrams sealed under wrong keys, at line rate,
//	              against a server with keys (always)
//
// Everything stays on 127.0.0.1, and every count and duration is bounded.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

var (
	flagBin      = flag.String("netmutexd", "", "netmutexd `binary`; empty: go build ./cmd/netmutexd into a temp dir")
	flagFloods   = flag.String("floods", "refused,connect,mass,multiconnect,garbage", "floods to run, in order")
	flagDuration = flag.Duration("duration", 10*time.Second, "length of each flood")
	flagQuiet    = flag.Duration("quiet", 2*time.Second, "the legitimate client alone before each flood (the baseline)")
	flagAfter    = flag.Duration("after", 5*time.Second, "wait after each flood before reading the RSS 'after'")
	flagKeys     = flag.Bool("keys", false, "run every server with -key-file (the garbage flood always does)")
	flagInterval = flag.Duration("interval", time.Millisecond, "pause between the legitimate client's pairs")
	flagRefRate  = flag.Float64("refused-rate", 300, "refused: datagrams per second")
	flagConnB    = flag.Int64("connect-bytes", 14_000_000, "connect: bytes of CONNECTs to send (first sends, cookie round trips on top)")
	flagConnSock = flag.Int("connect-sockets", 16, "connect: sending sockets (source ports)")
	flagMassN    = flag.Int("mass-locks", 70_000, "mass: LOCKs per session (the server's cap is 65,536)")
	flagMassTTL  = flag.Duration("mass-ttl", 2*time.Second, "mass: TTL of the locks")
	flagMultRate = flag.Float64("multiconnect-rate", 1000, "multiconnect: datagrams per second")
	flagGarbSend = flag.Int("garbage-senders", 2, "garbage: sending sockets, each at line rate")
	flagLog      = flag.Bool("v", false, "print the servers' log paths and progress")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
}

func run() error {
	work, err := os.MkdirTemp("", "netmutex-flood-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := *flagBin
	if bin == "" {
		bin = filepath.Join(work, "netmutexd")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/netmutex/netmutex/cmd/netmutexd").CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build netmutexd: %v\n%s", err, out)
		}
	}
	var results []result
	for _, name := range strings.Split(*flagFloods, ",") {
		name = strings.TrimSpace(name)
		f, ok := floods[name]
		if !ok {
			return fmt.Errorf("unknown flood %q (want one of refused, connect, mass, multiconnect, garbage)", name)
		}
		r, err := measure(bin, filepath.Join(work, name), name, f)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results = append(results, r)
	}
	printTable(os.Stdout, results)
	return nil
}

// A flood runs until stop is closed and returns what it saw, for the notes.
type flood struct {
	keyed bool // always against a server with keys
	run   func(e *env, stop <-chan struct{}) string
}

var floods = map[string]flood{
	"refused":      {run: floodRefused},
	"connect":      {run: floodConnect},
	"mass":         {run: floodMass},
	"multiconnect": {run: floodMultiConnect},
	"garbage":      {keyed: true, run: floodGarbage},
}

// env is what a flood works against.
type env struct {
	addr    *net.UDPAddr
	keyFile string        // "" without keys
	keys    *seal.Keyring // nil without keys
	c       counters

	wmu     sync.Mutex
	windows []window // spans of interest within the flood, summarised apart
}

// window is a span of the flood whose legitimate pairs are summarised apart (the mass
// flood's expiries).
type window struct {
	label    string
	from, to time.Time
}

func (e *env) mark(label string, from, to time.Time) {
	e.wmu.Lock()
	e.windows = append(e.windows, window{label, from, to})
	e.wmu.Unlock()
}

// counters count the flood's own traffic, both ways.
type counters struct {
	sentDg, sentB, recvDg, recvB atomic.Int64
}

// result is one row of the table.
type result struct {
	name, notes                  string
	keyed                        bool
	secs                         float64
	sentDg, sentB, recvDg, recvB int64
	base, during                 stats
	rssBefore, rssPeak, rssAfter int64   // kB
	cpu                          float64 // server CPU during the flood, in cores
}

// measure runs one flood against a fresh server.
func measure(bin, dir, name string, f flood) (result, error) {
	r := result{name: name, keyed: f.keyed || *flagKeys}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return r, err
	}
	e := &env{}
	args := []string{"-listen", "127.0.0.1:0", "-http", "", "-data", filepath.Join(dir, "data"), "-log-level", "info"}
	if r.keyed {
		e.keyFile = filepath.Join(dir, "keys")
		secret := make([]byte, seal.KeySize)
		rand.Read(secret)
		if err := os.WriteFile(e.keyFile, []byte("1 "+hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
			return r, err
		}
		keys, err := seal.LoadKeyFile(e.keyFile)
		if err != nil {
			return r, err
		}
		e.keys = keys
		args = append(args, "-key-file", e.keyFile)
	}
	srv, err := startServer(bin, filepath.Join(dir, "netmutexd.log"), args)
	if err != nil {
		return r, err
	}
	defer srv.kill()
	if *flagLog {
		fmt.Fprintf(os.Stderr, "flood %s: netmutexd pid %d on %s, log %s\n", name, srv.pid, srv.addr, srv.logPath)
	}
	e.addr, err = net.ResolveUDPAddr("udp", srv.addr)
	if err != nil {
		return r, err
	}

	lg, err := startLegit(srv.addr, e.keyFile)
	if err != nil {
		return r, err
	}
	rss := newRSSWatch(srv.pid)
	defer rss.stop()

	quietFrom := time.Now()
	time.Sleep(*flagQuiet)
	r.rssBefore = vmRSS(srv.pid)
	rss.reset()
	cpu0 := cpuTicks(srv.pid)
	stop := make(chan struct{})
	notes := make(chan string, 1)
	from := time.Now()
	go func() { notes <- f.run(e, stop) }()
	time.Sleep(*flagDuration)
	close(stop)
	to := time.Now()
	r.notes = <-notes
	r.secs = to.Sub(from).Seconds()
	r.cpu = float64(cpuTicks(srv.pid)-cpu0) / clockTicks / r.secs
	r.sentDg, r.sentB, r.recvDg, r.recvB = e.c.sentDg.Load(), e.c.sentB.Load(), e.c.recvDg.Load(), e.c.recvB.Load()
	time.Sleep(*flagAfter)
	r.rssPeak = rss.peak()
	r.rssAfter = vmRSS(srv.pid)
	samples := lg.stop()
	r.base = summarize(samples, quietFrom, from)
	r.during = summarize(samples, from, to)
	for label, ws := range groupWindows(e.windows) {
		var in []sample
		for _, w := range ws {
			for _, x := range samples {
				if !x.at.Before(w.from) && x.at.Before(w.to) {
					in = append(in, x)
				}
			}
		}
		st := summarize(in, time.Time{}, time.Now().Add(time.Hour))
		r.notes += fmt.Sprintf("; legitimate pairs during %s (%d spans): %d, p50 %s ms, p99 %s ms, max %s ms, %d errors",
			label, len(ws), st.n, ms(st.p50), ms(st.p99), ms(st.max), st.errs)
	}
	if srv.exited() {
		return r, fmt.Errorf("netmutexd exited during the flood (log %s)", srv.logPath)
	}
	if *flagLog {
		fmt.Fprintf(os.Stderr, "flood %s: done: %s\n", name, r.notes)
	}
	return r, nil
}

func groupWindows(ws []window) map[string][]window {
	m := map[string][]window{}
	for _, w := range ws {
		m[w.label] = append(m[w.label], w)
	}
	return m
}

// The server process.

type server struct {
	cmd     *exec.Cmd
	pid     int
	addr    string
	logPath string
	done    chan struct{}
}

var servingRE = regexp.MustCompile(`msg="netmutexd serving" addr=(\S+)`)

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

// The legitimate client.

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

// The server's resources, from /proc.

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

// clockTicks is USER_HZ, 100 on Linux everywhere that matters.
const clockTicks = 100

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

// Raw sockets.

// sock is one flood socket: plain, or sealing under its own Sealer (a session is bound
// to the nonce prefix of its CONNECT).
type sock struct {
	e      *env
	c      *net.UDPConn
	key    *seal.Key
	sealer *seal.Sealer
	buf    []byte
	rbuf   []byte
	opened []byte
}

func newSock(e *env, key *seal.Key) (*sock, error) {
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, e.addr)
	if err != nil {
		return nil, err
	}
	c.SetWriteBuffer(4 << 20)
	c.SetReadBuffer(4 << 20)
	s := &sock{e: e, c: c, key: key, buf: make([]byte, 0, 2048), rbuf: make([]byte, 65536), opened: make([]byte, 0, 2048)}
	if key != nil {
		s.sealer = seal.NewSealer()
	}
	return s, nil
}

// sessionSock is a socket sealing under the server's key when it has one.
func sessionSock(e *env) (*sock, error) {
	var key *seal.Key
	if e.keys != nil {
		key = e.keys.Sealing()
	}
	return newSock(e, key)
}

// send sends the plain datagram b, sealed if the socket has a key. Errors (a full
// buffer, ECONNREFUSED after an ICMP) are ignored: a flood does not care.
func (s *sock) send(b []byte) {
	if s.key != nil {
		s.buf = s.sealer.Seal(s.buf[:0], s.key, b)
		b = s.buf
	}
	if _, err := s.c.Write(b); err == nil {
		s.e.c.sentDg.Add(1)
		s.e.c.sentB.Add(int64(len(b)))
	}
}

// sendRaw sends b as it is.
func (s *sock) sendRaw(b []byte) {
	if _, err := s.c.Write(b); err == nil {
		s.e.c.sentDg.Add(1)
		s.e.c.sentB.Add(int64(len(b)))
	}
}

// recv reads one reply, opened if the server has keys; ok is false on a timeout or a
// closed socket. Replies that do not parse are counted and skipped.
func (s *sock) recv(deadline time.Time) (wire.Datagram, bool) {
	for {
		s.c.SetReadDeadline(deadline)
		n, err := s.c.Read(s.rbuf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed) {
				return wire.Datagram{}, false
			}
			continue // ECONNREFUSED and the like
		}
		s.e.c.recvDg.Add(1)
		s.e.c.recvB.Add(int64(n))
		b := s.rbuf[:n]
		if s.e.keys != nil && seal.IsSealed(b) {
			p, _, _, err := s.e.keys.Open(s.opened[:0], b)
			if err != nil {
				continue
			}
			b = p
		}
		d, err := wire.Parse(b, true)
		if err != nil {
			continue
		}
		return d, true
	}
}

// readLoop hands every reply frame to fn until the socket is closed.
func (s *sock) readLoop(fn func(f *wire.Frame)) {
	var f wire.Frame
	for {
		d, ok := s.recv(time.Now().Add(time.Hour))
		if !ok {
			return
		}
		for d.Next(&f) {
			fn(&f)
		}
	}
}

func connectDatagram(nonce uint64, info string, cookie []byte) []byte {
	b := wire.BeginDatagram(make([]byte, 0, wire.MinConnectDatagram), wire.Header{})
	b = wire.AppendConnect(b, nonce, info, cookie)
	if pad := wire.MinConnectDatagram - (len(b) + wire.TrailerSize); pad > 0 {
		b = wire.AppendPad(b, max(pad, wire.FrameHeaderSize))
	}
	return wire.FinishDatagram(b)
}

// handshake gets a session for s: CONNECT, COOKIE, CONNECT with the cookie, CONNECTED.
func (s *sock) handshake(info string) (uint64, error) {
	nonce := mrand.Uint64() | 1
	var cookie []byte
	var f wire.Frame
	for attempt := 0; attempt < 20; attempt++ {
		s.send(connectDatagram(nonce, info, cookie))
		deadline := time.Now().Add(200 * time.Millisecond)
		for {
			d, ok := s.recv(deadline)
			if !ok {
				break
			}
			for d.Next(&f) {
				if f.ID != nonce {
					continue
				}
				switch f.Op {
				case wire.OpCookie:
					cookie = append([]byte(nil), f.Cookie...)
				case wire.OpConnected:
					return f.Session, nil
				case wire.OpError:
					return 0, fmt.Errorf("CONNECT refused: code %d", f.Code)
				}
			}
			if cookie != nil {
				break
			}
		}
	}
	return 0, errors.New("no CONNECTED")
}

// pace calls send rate times a second until stop is closed (rate <= 0: as fast as it
// can), and returns how many times it called it.
func pace(stop <-chan struct{}, rate float64, send func()) int {
	start := time.Now()
	n := 0
	for {
		if rate <= 0 {
			for i := 0; i < 64; i++ {
				send()
				n++
			}
			select {
			case <-stop:
				return n
			default:
			}
			continue
		}
		due := int(rate * time.Since(start).Seconds())
		for ; n < due; n++ {
			send()
		}
		select {
		case <-stop:
			return n
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// codeCounts counts ERROR codes and other reply ops seen.
type codeCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *codeCounts) add(f *wire.Frame) {
	name := opName(f.Op)
	if f.Op == wire.OpError {
		name = codeName(f.Code)
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[name]++
	c.mu.Unlock()
}

func (c *codeCounts) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ks []string
	for k := range c.m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c.m[k]))
	}
	if len(parts) == 0 {
		return "no replies"
	}
	return strings.Join(parts, " ")
}

func opName(op wire.Op) string {
	switch op {
	case wire.OpConnected:
		return "CONNECTED"
	case wire.OpPong:
		return "PONG"
	case wire.OpOK:
		return "OK"
	case wire.OpLocked:
		return "LOCKED"
	case wire.OpIsolated:
		return "ISOLATED"
	case wire.OpDisconnected:
		return "DISCONNECTED"
	case wire.OpRedirect:
		return "REDIRECT"
	case wire.OpCookie:
		return "COOKIE"
	}
	return fmt.Sprintf("op%#x", uint8(op))
}

func codeName(c wire.Code) string {
	switch c {
	case wire.CodeLockDelay:
		return "LOCK_DELAY"
	case wire.CodeStale:
		return "STALE"
	case wire.CodeAuth:
		return "AUTH"
	case wire.CodeTooManySessions:
		return "TOO_MANY_SESSIONS"
	case wire.CodeTooManyLocks:
		return "TOO_MANY_LOCKS"
	case wire.CodeRateLimited:
		return "RATE_LIMITED"
	case wire.CodeForbidden:
		return "FORBIDDEN"
	case wire.CodeServerFull:
		return "SERVER_FULL"
	}
	return fmt.Sprintf("ERROR%d", c)
}

// The floods.

// floodRefused: refused LOCKs with descending ids from one session, each datagram full of
// LOCK frames for a key another client holds.
func floodRefused(e *env, stop <-chan struct{}) string {
	const key = "held"
	holder, err := netmutex.Open(20, 100*time.Millisecond, []string{e.addr.String()}, &netmutex.Options{KeyFile: e.keyFile, IsolationInfo: "holder"})
	if err != nil {
		return "holder: " + err.Error()
	}
	defer holder.Close(2, 100*time.Millisecond)
	var hl netmutex.Lock
	if err := holder.Lock(20, 100*time.Millisecond, &hl, key, 30*time.Second); err != nil {
		return "holder: " + err.Error()
	}
	s, err := sessionSock(e)
	if err != nil {
		return err.Error()
	}
	defer s.c.Close()
	session, err := s.handshake("refused-flood")
	if err != nil {
		return "handshake: " + err.Error()
	}
	var codes codeCounts
	go s.readLoop(codes.add)
	id := uint64(1) << 40
	frame := wire.AppendLock(nil, 0, 10_000, key)
	per := (wire.MaxDatagram - seal.Overhead - wire.HeaderSize - wire.TrailerSize) / len(frame)
	if e.keys == nil {
		per = (wire.MaxDatagram - wire.HeaderSize - wire.TrailerSize) / len(frame)
	}
	b := make([]byte, 0, wire.MaxDatagram)
	heartbeat := time.Now()
	n := pace(stop, *flagRefRate, func() {
		b = wire.BeginDatagram(b[:0], wire.Header{Session: session})
		for i := 0; i < per; i++ {
			b = wire.AppendLock(b, id, 10_000, key)
			id--
		}
		s.send(wire.FinishDatagram(b))
		if time.Since(heartbeat) > 5*time.Second {
			heartbeat = time.Now()
			holder.Update(5, 100*time.Millisecond, &hl, 30*time.Second)
		}
	})
	time.Sleep(100 * time.Millisecond)
	return fmt.Sprintf("%d datagrams of %d LOCKs (%d refused LOCKs, ids descending); replies: %s", n, per, n*per, codes.String())
}

// floodConnect: CONNECTs from many source ports; a third never answer the cookie, a third
// send it back (each becomes a session, within the caps), a third send a bogus cookie.
func floodConnect(e *env, stop <-chan struct{}) string {
	k := max(*flagConnSock, 3)
	type connSock struct {
		*sock
		mu sync.Mutex // the sender and the reader (answering cookies) take turns
	}
	var socks []*connSock
	var codes codeCounts
	var smu sync.Mutex
	sessions := map[uint64]bool{}
	var wg sync.WaitGroup
	for i := 0; i < k; i++ {
		s, err := sessionSock(e)
		if err != nil {
			return err.Error()
		}
		cs := &connSock{sock: s}
		socks = append(socks, cs)
		answer := i%3 == 1
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The cookie binds the address: the round trip goes from the same socket.
			cs.readLoop(func(f *wire.Frame) {
				codes.add(f)
				switch f.Op {
				case wire.OpCookie:
					if answer {
						cs.mu.Lock()
						cs.send(connectDatagram(f.ID, "connect-flood", f.Cookie))
						cs.mu.Unlock()
					}
				case wire.OpConnected:
					smu.Lock()
					sessions[f.Session] = true
					smu.Unlock()
				}
			})
		}()
	}
	size := int64(wire.MinConnectDatagram)
	if e.keys != nil {
		size += seal.Overhead
	}
	total := *flagConnB / size
	rate := float64(total) / flagDuration.Seconds()
	bogus := make([]byte, wire.CookieSize)
	var sent int64
	pace(stop, rate, func() {
		if sent >= total {
			return
		}
		i := int(sent % int64(k))
		sent++
		var cookie []byte
		if i%3 == 2 {
			rand.Read(bogus)
			cookie = bogus
		}
		cs := socks[i]
		cs.mu.Lock()
		cs.send(connectDatagram(mrand.Uint64()|1, "connect-flood", cookie))
		cs.mu.Unlock()
	})
	time.Sleep(200 * time.Millisecond)
	for _, s := range socks {
		s.c.Close()
	}
	wg.Wait()
	return fmt.Sprintf("%d first CONNECTs (%d B each) from %d sockets; distinct sessions granted: %d; replies: %s", sent, size, k, len(sessions), codes.String())
}

// floodMass: one session locks as many keys as fast as it can, with a short TTL; they
// expire together; then again with a fresh session, until the flood ends.
func floodMass(e *env, stop <-chan struct{}) string {
	ttlMs := uint32(*flagMassTTL / time.Millisecond)
	var notes []string
	var codes codeCounts
	cycles := 0
	for {
		select {
		case <-stop:
			return fmt.Sprintf("%d cycles [%s]; replies: %s", cycles, strings.Join(notes, "; "), codes.String())
		default:
		}
		s, err := sessionSock(e)
		if err != nil {
			return err.Error()
		}
		session, err := s.handshake("mass")
		if err != nil {
			s.c.Close()
			notes = append(notes, "handshake: "+err.Error())
			time.Sleep(100 * time.Millisecond)
			continue
		}
		cycles++
		n := *flagMassN
		base := uint64(1) << 32
		answered := make([]atomic.Bool, n)
		var granted, refused atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.readLoop(func(f *wire.Frame) {
				codes.add(f)
				if f.ID >= base && f.ID < base+uint64(n) {
					if !answered[f.ID-base].Swap(true) {
						if f.Op == wire.OpOK {
							granted.Add(1)
						} else {
							refused.Add(1)
						}
					}
				}
			})
		}()
		limit := wire.MaxDatagram - wire.TrailerSize
		if e.keys != nil {
			limit -= seal.Overhead
		}
		b := make([]byte, 0, wire.MaxDatagram)
		start := time.Now()
		// Up to 3 passes: what the server's socket buffer dropped goes again (a LOCK
		// retransmitted with its id is idempotent).
		for pass := 0; pass < 3; pass++ {
			b = wire.BeginDatagram(b[:0], wire.Header{Session: session})
			frames := 0
			for i := 0; i < n; i++ {
				if answered[i].Load() {
					continue
				}
				key := "mass-" + strconv.Itoa(i)
				if len(b)+wire.FrameHeaderSize+7+len(key) > limit {
					s.send(wire.FinishDatagram(b))
					b = wire.BeginDatagram(b[:0], wire.Header{Session: session})
					frames = 0
				}
				b = wire.AppendLock(b, base+uint64(i), ttlMs, key)
				frames++
			}
			if frames > 0 {
				s.send(wire.FinishDatagram(b))
			}
			time.Sleep(100 * time.Millisecond)
		}
		locking := time.Since(start)
		// The locks were granted within [start, start+locking]: they expire within the
		// same span TTL later; the server isolates the session and releases them all.
		e.mark("the locking bursts", start, start.Add(locking))
		e.mark("the mass expiries", start.Add(*flagMassTTL), start.Add(*flagMassTTL+locking+500*time.Millisecond))
		// Let them expire together; keep the session alive meanwhile.
		expire := time.Now().Add(*flagMassTTL + time.Second)
		for time.Now().Before(expire) {
			select {
			case <-stop:
				expire = time.Now()
			case <-time.After(200 * time.Millisecond):
				s.send(wire.FinishDatagram(wire.AppendEmpty(wire.BeginDatagram(b[:0], wire.Header{Session: session}), wire.OpTouch, base+uint64(n)+uint64(time.Now().UnixNano()%1000))))
			}
		}
		s.c.Close()
		<-done
		notes = append(notes, fmt.Sprintf("granted %d, refused %d in %v", granted.Load(), refused.Load(), locking.Round(time.Millisecond)))
	}
}

// floodMultiConnect: as many CONNECTs as fit in one datagram, at a fixed rate.
func floodMultiConnect(e *env, stop <-chan struct{}) string {
	s, err := sessionSock(e)
	if err != nil {
		return err.Error()
	}
	limit := wire.MaxDatagram - wire.TrailerSize
	if e.keys != nil {
		limit -= seal.Overhead
	}
	b := wire.BeginDatagram(nil, wire.Header{})
	per := 0
	for len(b)+wire.FrameHeaderSize+3 <= limit {
		per++
		b = wire.AppendConnect(b, uint64(per), "", nil)
	}
	dg := wire.FinishDatagram(b)
	var codes codeCounts
	done := make(chan struct{})
	go func() { defer close(done); s.readLoop(codes.add) }()
	n := pace(stop, *flagMultRate, func() { s.send(dg) })
	time.Sleep(200 * time.Millisecond)
	s.c.Close()
	<-done
	return fmt.Sprintf("%d datagrams of %d CONNECTs (%d B); replies: %s", n, per, len(dg), codes.String())
}

// floodGarbage: random bytes, datagrams sealed under a wrong secret or an unknown key id
// (CONNECT-sized and small) and plain CONNECTs, at line rate.
func floodGarbage(e *env, stop <-chan struct{}) string {
	wrongSecret := make([]byte, seal.KeySize)
	rand.Read(wrongSecret)
	wrong, _ := seal.NewKey(1, wrongSecret, false)
	unknown, _ := seal.NewKey(200, wrongSecret, false)
	var wg sync.WaitGroup
	var codes codeCounts
	var kinds [5]atomic.Int64
	var socks []*sock
	for i := 0; i < max(*flagGarbSend, 1); i++ {
		s, err := newSock(e, nil)
		if err != nil {
			return err.Error()
		}
		socks = append(socks, s)
		wg.Add(2)
		go func() { defer wg.Done(); s.readLoop(codes.add) }()
		go func(i int) {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
			sealer := seal.NewSealer()
			junk := make([]byte, wire.MaxDatagram)
			rand.Read(junk)
			connect := connectDatagram(7, "garbage", nil)
			ping := wire.FinishDatagram(wire.AppendEmpty(wire.BeginDatagram(nil, wire.Header{Session: 1}), wire.OpPing, 9))
			var sb []byte
			pace(stop, 0, func() {
				k := rng.IntN(len(kinds))
				kinds[k].Add(1)
				switch k {
				case 0: // random bytes, random length
					n := 1 + rng.IntN(len(junk))
					binary.LittleEndian.PutUint64(junk[rng.IntN(len(junk)-8):], rng.Uint64())
					s.sendRaw(junk[:n])
				case 1: // a CONNECT sealed under the right key id, a wrong secret
					sb = sealer.Seal(sb[:0], wrong, connect)
					s.sendRaw(sb)
				case 2: // a small datagram under the right key id, a wrong secret
					sb = sealer.Seal(sb[:0], wrong, ping)
					s.sendRaw(sb)
				case 3: // a CONNECT under an unknown key id
					sb = sealer.Seal(sb[:0], unknown, connect)
					s.sendRaw(sb)
				case 4: // a plain CONNECT
					s.sendRaw(connect)
				}
			})
		}(i)
	}
	<-stop
	time.Sleep(200 * time.Millisecond)
	for _, s := range socks {
		s.c.Close()
	}
	wg.Wait()
	return fmt.Sprintf("%d senders: random %d, wrong-secret CONNECT %d, wrong-secret small %d, unknown-key CONNECT %d, plain CONNECT %d; replies: %s",
		len(socks), kinds[0].Load(), kinds[1].Load(), kinds[2].Load(), kinds[3].Load(), kinds[4].Load(), codes.String())
}

// The table.

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) }
func mb(kb int64) string        { return strconv.FormatFloat(float64(kb)/1024, 'f', 1, 64) }

func printTable(w io.Writer, rs []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "flood\tkeys\tsent dg/s\tsent MB/s\treplies dg/s\treply/sent B\tpairs\terrors\tquiet p99 ms\tp50 ms\tp99 ms\tmax ms\tRSS before MB\tpeak MB\tafter MB\tserver CPU\t")
	for _, r := range rs {
		ratio := "-"
		if r.sentB > 0 {
			ratio = strconv.FormatFloat(float64(r.recvB)/float64(r.sentB), 'f', 3, 64)
		}
		fmt.Fprintf(tw, "%s\t%v\t%.0f\t%.2f\t%.0f\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f%%\t\n",
			r.name, r.keyed, float64(r.sentDg)/r.secs, float64(r.sentB)/r.secs/1e6, float64(r.recvDg)/r.secs, ratio,
			r.during.n, r.during.errs, ms(r.base.p99), ms(r.during.p50), ms(r.during.p99), ms(r.during.max),
			mb(r.rssBefore), mb(r.rssPeak), mb(r.rssAfter), 100*r.cpu)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range rs {
		fmt.Fprintf(w, "%s: %s\n", r.name, r.notes)
	}
}
