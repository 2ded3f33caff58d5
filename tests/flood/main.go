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
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
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

var servingRE = regexp.MustCompile(`msg="netmutexd serving" addr=(\S+)`)

// The legitimate client.

// The server's resources, from /proc.

// clockTicks is USER_HZ, 100 on Linux everywhere that matters.
const clockTicks = 100

// Raw sockets.

// The floods.

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
