// Flags: each flag's value type checks its rule as it is parsed, so that a bad flag is one
// line naming the flag and the rule, and exit status 2.

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/netmutex/netmutex/server"
)

// durationValue is a duration flag that accepts only what the protocol can carry:
// at least 1ms and less than 2^32 ms.
type durationValue time.Duration

// spinValue is -spin-wait: 0 (off) to server.MaxSpinWait.
type spinValue time.Duration

// capValue is a cap: a count that must not be negative; 0 means the default.
type capValue int

// idValue is a server id, 1 to 65535.
type idValue uint16

// choiceValue is one word out of a fixed list.
type choiceValue struct {
	v      string
	ok     []string
	choice string // the rule, as the error states it
}

// addrValue is a host:port address; empty only if allowed.
type addrValue struct {
	v          string
	emptyOK    bool
	emptyMeans string
}

// checkHostPort accepts host:port with a port number 0-65535 (0: any free port) and a
// host that may be empty (every address), an IP address or a name.
func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return errors.New("must be host:port, such as 127.0.0.1:15663 or [::1]:15663, with a port from 0 to 65535")
	}
	return nil
}

// boolValue is a boolean flag whose error states its rule.
type boolValue bool

// nonEmptyValue is a string that must not be empty.
type nonEmptyValue string

// flags are netmutexd's command line, each already checked by its Set.
type flags struct {
	listen         addrValue
	http           addrValue
	data           nonEmptyValue
	maxTTL         durationValue
	sessionTimeout durationValue
	retransmit     durationValue
	isolateTimeout durationValue
	spinWait       spinValue
	isolateCmd     string
	id             idValue
	logLevel       choiceValue
	logFormat      choiceValue
	keyFile        string
	insecure       boolValue
	version        boolValue
	name           string
	initialCluster string
	listenRaft     addrValue
	cpuProfile     string

	maxSessions, maxSessionsPerAddr, maxLocksPerSession, maxLocks capValue
	connectRate, maxIsolations, maxWaitersPerKey, maxWaitersSess  capValue
}

// newFlagSet defines every flag of netmutexd on a FlagSet that reports nothing itself:
// run prints one line for a bad flag, and the usage for -h only.
func newFlagSet(def server.Config) (*flag.FlagSet, *flags) {
	f := &flags{
		listen:         addrValue{v: def.ListenAddr},
		listenRaft:     addrValue{emptyOK: true, emptyMeans: "this node's RAFT_TCP_ADDRESS"},
		http:           addrValue{v: defaultHTTPAddr, emptyOK: true, emptyMeans: "no HTTP server"},
		data:           nonEmptyValue(defaultDataDir()),
		maxTTL:         durationValue(def.MaxTTL),
		sessionTimeout: durationValue(def.SessionTimeout),
		retransmit:     durationValue(def.RetransmitWindow),
		isolateTimeout: durationValue(def.IsolateTimeout),
		spinWait:       spinValue(def.SpinWait),
		id:             idValue(def.ServerID),
		logLevel:       choiceValue{v: "info", ok: []string{"debug", "info", "warn", "error"}, choice: "debug, info, warn or error"},
		logFormat:      choiceValue{v: "text", ok: []string{"text", "json"}, choice: "text or json"},

		maxSessions:        capValue(def.MaxSessions),
		maxSessionsPerAddr: capValue(def.MaxSessionsPerAddr),
		maxLocksPerSession: capValue(def.MaxLocksPerSession),
		maxLocks:           capValue(def.MaxLocks),
		connectRate:        capValue(def.ConnectRate),
		maxIsolations:      capValue(def.MaxIsolations),
		maxWaitersPerKey:   capValue(def.MaxWaitersPerKey),
		maxWaitersSess:     capValue(def.MaxWaitersPerSession),
	}
	fs := flag.NewFlagSet("netmutexd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {} // run prints the usage for -h, and one line for a bad flag

	fs.Var(&f.listen, "listen", "UDP `host:port` to serve on; without -key-file a loopback address only (unless -insecure)")
	fs.Var(&f.http, "http", "TCP `host:port` serving /metrics, /locks, /healthz and /readyz, without authentication (keep it on loopback or a trusted network); empty: none")
	fs.Var(&f.data, "data", "data `directory` (boot count, fence high-water mark, clean-stop flag); created if missing")
	fs.Var(&f.maxTTL, "max-ttl", "longest lock TTL granted; also the lock-delay after an unclean start (a `duration`, 1ms to 2^32 ms)")
	fs.Var(&f.sessionTimeout, "session-timeout", "close a session silent for this long, isolating it first if it holds locks (a `duration`, 1ms to 2^32 ms)")
	fs.Var(&f.retransmit, "retransmit-window", "advertised limit on how long clients retransmit a request (a `duration`, 1ms to 2^32 ms)")
	fs.StringVar(&f.isolateCmd, "isolate-cmd", "", "`command` run with /bin/sh -c when a session is isolated, its IsolationInfo on stdin only; -max-isolations run at once at most, the rest queue. The info is the client's: never interpolate it into a command line ('ssh \"$(cat)\" reboot' runs an info of -oProxyCommand=...). Safe example: /usr/local/bin/netmutex-isolate, a copy of examples/isolate/isolate.sh. Empty: release the locks at once")
	fs.Var(&f.isolateTimeout, "isolate-timeout", "kill the isolation command after this long and release the keys (a `duration`, 1ms to 2^32 ms)")
	fs.Var(&f.id, "id", "this server's `id` (1-65535), advertised to clients")
	fs.Var(&f.logLevel, "log-level", "log `level`: debug, info, warn or error")
	fs.Var(&f.logFormat, "log-format", "log `format` on standard error: text (key=value) or json (one object a line)")
	fs.StringVar(&f.keyFile, "key-file", "", "seal every datagram with the pre-shared keys of `file` (lines 'ID HEX [admin]': the first key seals, all open; admin keys may send UNLOCKALL); without it the server serves loopback only")
	fs.Var(&f.insecure, "insecure", "without -key-file, serve a non-loopback address anyway: anyone on the network path can then act for a client")
	fs.Var(&f.version, "version", "print the version and the Go version, and exit")
	fs.StringVar(&f.name, "name", "", "this node's `name` in -initial-cluster")
	fs.StringVar(&f.initialCluster, "initial-cluster", "", "run as a node of a Raft cluster of these `members`: NAME=CLIENT_UDP_ADDRESS/RAFT_TCP_ADDRESS,... (the same list on every node; see CLUSTER above); empty: a single server")
	fs.Var(&f.spinWait, "spin-wait", "keep polling the socket this long after each batch of requests before sleeping: lower latency for lightly loaded clients on machines where waking a thread is slow, at the cost of up to a core of CPU while clients send (a `duration`; 0: off; at most 10ms)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the run, until the server stops, to `file` (go tool pprof), for performance work")
	fs.Var(&f.listenRaft, "listen-raft", "TCP `host:port` to bind Raft to, when it differs from this node's RAFT_TCP_ADDRESS in -initial-cluster (a proxy in front); empty: that address")

	fs.Var(&f.maxSessions, "max-sessions", "at most `n` sessions in all; more CONNECTs are refused TOO_MANY_SESSIONS; 0: the default")
	fs.Var(&f.maxSessionsPerAddr, "max-sessions-per-addr", "at most `n` sessions from one IP address; more are refused TOO_MANY_SESSIONS; 0: the default")
	fs.Var(&f.maxLocksPerSession, "max-locks-per-session", "at most `n` locks one session holds or waits for; more are refused TOO_MANY_LOCKS; 0: the default")
	fs.Var(&f.maxLocks, "max-locks", "at most `n` locks held or waited for in all; more are refused SERVER_FULL; 0: the default")
	fs.Var(&f.connectRate, "connect-rate", "at most `n` CONNECTs per second from one IP address; more are refused RATE_LIMITED; 0: the default")
	fs.Var(&f.maxIsolations, "max-isolations", "at most `n` isolation commands running at once; the rest queue; 0: the default")
	fs.Var(&f.maxWaitersPerKey, "max-waiters-per-key", "at most `n` LOCKs waiting in one key's queue; more are refused TOO_MANY_WAITERS; 0: the default")
	fs.Var(&f.maxWaitersSess, "max-waiters-per-session", "at most `n` waiting LOCKs and LOCKMANYs of one session; more are refused TOO_MANY_WAITERS; 0: the default")
	return fs, f
}

// printUsage writes the help of -h.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `usage: netmutexd [flags]

The netmutex lock server. It logs to standard error.

SIGINT, SIGTERM or SIGHUP stops it cleanly: running isolation commands are waited
for (each at most -isolate-timeout), then the clean stop is recorded in -data, so
the next start has no lock-delay if no lock was held. SIGHUP stops rather than
reopening logs: there is no log file to reopen.

CLUSTER: with -name and -initial-cluster, netmutexd is one node of a cluster
replicated with Raft. Start each node with its own -name and -data and the same
-initial-cluster (and the same -key-file, -max-ttl, -session-timeout, caps and
-isolate-cmd), for example:

  netmutexd -name n1 -data d1 -initial-cluster "n1=127.0.0.1:15661/127.0.0.1:16661,n2=127.0.0.1:15662/127.0.0.1:16662,n3=127.0.0.1:15663/127.0.0.1:16663"

and the same with n2/d2 and n3/d3. A node serves clients on its CLIENT_UDP_ADDRESS
(-listen overrides it) and talks Raft on its RAFT_TCP_ADDRESS, sealed with the
-key-file's keys when there are keys. The leader serves; followers redirect. A
cluster of 3 survives the loss of 1 node, of 5 the loss of 2: sessions, locks,
wait queues and fences are in the replicated log, so clients keep them across a
failover (about a second) without a lock-delay. With no quorum nothing is granted.
A node that lost its disk is replaced by starting a node with the same -name and
an empty -data: it catches up from the others.

Exit statuses: 0 clean stop, -h or -version; 1 failed to start or to stop
cleanly; 2 bad flag.

Flags:
`)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
