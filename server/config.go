// Configuration: Config, its defaults and its validation.

package server

import (
	"errors"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"time"

	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// Member is one server of the cluster as clients are told of it: its id and the UDP
// address they reach it at. An alias, so that embedders can name it.
type Member = wire.Server

// Config configures a Server. Start from DefaultConfig.
type Config struct {
	// ListenAddr is the UDP address to serve on; port 0 picks a free one.
	ListenAddr string
	// DataDir holds the state file (boot count, fence high-water mark, clean-stop flag).
	// Required; created if missing.
	DataDir string
	// MaxTTL is the longest lock TTL granted, and the length of the start-up lock-delay.
	MaxTTL time.Duration
	// SessionTimeout closes a session that has sent nothing for that long.
	SessionTimeout time.Duration
	// RetransmitWindow is advertised to clients: they never retransmit a request later
	// than that after first sending it.
	RetransmitWindow time.Duration
	// IsolateCmd runs under /bin/sh -c with the isolated session's IsolationInfo on
	// standard input. Empty: no command, an isolated session's locks are released at once.
	IsolateCmd string
	// IsolateTimeout bounds one run of IsolateCmd; it is then killed and given up on.
	IsolateTimeout time.Duration
	// ServerID is this server's id in CONNECTED and REDIRECT.
	ServerID uint16
	// Servers is the cluster advertised in CONNECTED; nil means just this server.
	Servers []Member
	// Redirect, if set, makes this server a follower that answers every request, CONNECT
	// included, with REDIRECT to it.
	Redirect *Member
	// Cluster, if set, makes this server a node of a cluster replicated with Raft (see
	// ClusterConfig). ListenAddr defaults to this member's ClientAddr, ServerID and
	// Servers come from Members, and Redirect must be nil. The machine's settings
	// (MaxTTL, SessionTimeout, the caps, whether IsolateCmd is set) must be the same on
	// every node: each node applies the log with its own.
	Cluster *ClusterConfig
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// HTTPAddr, if set, is the TCP address of the operators' HTTP server: /metrics,
	// /locks, /healthz and /readyz (see Server.HTTPAddr), without authentication: keep it
	// on loopback or a trusted network. Port 0 picks a free one. Empty: no HTTP server.
	// No default: netmutexd's -http flag has one, embedders and tests ask for it.
	HTTPAddr string

	// Keys, if set, make the server accept and send only sealed datagrams
	// (docs/PROTOCOL.md, Security). KeyFile is the file they were read from (netmutexd
	// -key-file), for logs only.
	Keys    *seal.Keyring
	KeyFile string
	// Insecure lets a server without Keys listen on a non-loopback address.
	Insecure bool

	// Caps, each refused with its own error code (0: the default).
	MaxSessions        int // sessions in all: TOO_MANY_SESSIONS
	MaxSessionsPerAddr int // sessions from one IP address: TOO_MANY_SESSIONS
	MaxLocksPerSession int // locks held by one session: TOO_MANY_LOCKS
	MaxLocks           int // locks held in all: SERVER_FULL
	ConnectRate        int // CONNECTs per second from one IP address: RATE_LIMITED
	MaxIsolations      int // isolation commands running at once; the rest queue
	// Waiters (docs/PROTOCOL.md, Waiting), refused TOO_MANY_WAITERS. The keys a session
	// waits for also count as held against MaxLocksPerSession and MaxLocks.
	MaxWaitersPerKey     int // waiting LOCKs in one key's queue
	MaxWaitersPerSession int // waiting LOCKs and LOCKMANYs of one session

	// SpinWait, if set, makes the loop keep polling the socket (yielding between tries)
	// for up to that long after the last batch that carried requests before it sleeps
	// in the netpoller: lower latency for a lightly loaded client where waking a thread
	// is slow, at the cost of up to a core of CPU while such a client is active.
	// Datagrams that carry no request (garbage, refused, forged) never start it. 0: off.
	// At most MaxSpinWait. Linux only: without recvmmsg (and with the netmutex_portable
	// tag) the socket cannot be polled, and it has no effect.
	SpinWait time.Duration
}

// Defaults, each filled in by New for a zero field of Config (withDefaults is the one
// place that does it).
const (
	// DefaultListenAddr is loopback: without keys the server must not be reachable from
	// other hosts. The port is the one the client's examples assume.
	DefaultListenAddr = "127.0.0.1:15663"
	// DefaultMaxTTL is a minute: the usual client locks with ttl = 1 minute against a
	// server started with no flags.
	DefaultMaxTTL = time.Minute
	// DefaultSessionTimeout is 15s: a client with nothing to send TOUCHes every third of
	// the timeout (5s), so two lost TOUCHes in a row do not close its session, and a dead
	// client's session is closed (its locks isolated) within 15s.
	DefaultSessionTimeout = 15 * time.Second
	// DefaultRetransmitWindow is a minute, as long as DefaultMaxTTL: a request older
	// than the longest lock it could ask for is of no use to its caller any more.
	DefaultRetransmitWindow = 60 * time.Second
	// DefaultIsolateTimeout is 10s: room for a command that reaches another host (ssh,
	// a cloud API) to finish, while an isolated session's keys stay unavailable no
	// longer than that if it hangs.
	DefaultIsolateTimeout = 10 * time.Second
	// DefaultServerID is 1: the one server of a single-node deployment.
	DefaultServerID = 1

	// DefaultMaxSessions is 100,000: far above the clients of one deployment (a session
	// is a process or a worker), and about 60 MB at most with their replay windows and
	// released-id lists, so a flood of sessions cannot exhaust the server's memory.
	DefaultMaxSessions = 100_000
	// DefaultMaxSessionsPerAddr is 1,024: one host running a worker per session of a
	// large pool still fits, while one host cannot take the whole table.
	DefaultMaxSessionsPerAddr = 1024
	// DefaultMaxLocksPerSession is 65,536: a scheduler holding a lock per running job,
	// with room to spare; past it one session could hold the table hostage.
	DefaultMaxLocksPerSession = 1 << 16
	// DefaultMaxLocks is 1,000,000: a few hundred MB at most, with keys of up to 255
	// bytes.
	DefaultMaxLocks = 1_000_000
	// DefaultConnectRate is 100 CONNECTs per second per address: a client connects once
	// and reconnects only after a restart or failover, so even a host with many
	// processes stays far below it.
	DefaultConnectRate = 100
	// DefaultMaxIsolations is 8 isolation commands at once: each is a process (often an
	// ssh or an API call); more at once only competes for the same host, and a flood of
	// isolations must not exhaust processes or threads.
	DefaultMaxIsolations = 8
	// DefaultMaxWaitersPerKey is 1,024: as many workers as one host's sessions may wait
	// for one key (a pool contending for a job), while one key cannot hold a queue that
	// takes longer to serve than any client would wait.
	DefaultMaxWaitersPerKey = 1024
	// DefaultMaxWaitersPerSession is 4,096: a scheduler waiting for a key per pending
	// job, with room to spare; bounded, so one session's end (which takes its waiters
	// out of every queue in one step) stays short.
	DefaultMaxWaitersPerSession = 4096

	// MaxSpinWait is the longest SpinWait (batchio.MaxSpinWait, the client's bound too).
	MaxSpinWait = batchio.MaxSpinWait
)

// Configuration errors, returned by Validate and New.
var (
	ErrNoDataDir        = errors.New("server: DataDir is required")
	ErrBadMaxTTL        = errors.New("server: MaxTTL must be between 1ms and 2^32-1 ms")
	ErrBadTimeout       = errors.New("server: SessionTimeout, RetransmitWindow and IsolateTimeout must be between 1ms and 2^32-1 ms")
	ErrTooManyServers   = errors.New("server: Servers do not fit in a CONNECTED reply")
	ErrBadRedirect      = errors.New("server: Redirect address longer than 255 bytes")
	ErrNoListenAddr     = errors.New("server: ListenAddr is required")
	ErrAlreadyClosed    = errors.New("server: already closed")
	ErrIsolationTimeout = errors.New("server: isolation command timed out")
	// ErrInsecureListen: without keys anyone who can reach the server can act for any
	// client on the path, so it serves loopback only unless told Insecure.
	ErrInsecureListen = errors.New("server: without keys (-key-file) the server listens on loopback only, unless Insecure (-insecure)")
	ErrBadCap         = errors.New("server: MaxSessions, MaxSessionsPerAddr, MaxLocksPerSession, MaxLocks, ConnectRate, MaxIsolations, MaxWaitersPerKey and MaxWaitersPerSession must not be negative")
	ErrBadSpinWait    = errors.New("server: SpinWait must be between 0 (off) and 10ms (MaxSpinWait)")
)

// DefaultConfig returns a configuration with every default filled in but DataDir.
func DefaultConfig() Config { return Config{}.withDefaults() }

// withDefaults returns c with every zero field that has a default set to it. It is the
// one place defaults are applied: DefaultConfig is withDefaults of the zero Config, and
// New applies it before Validate, so a Config built field by field works too.
func (c Config) withDefaults() Config {
	if c.ListenAddr == "" {
		c.ListenAddr = DefaultListenAddr
	}
	if c.MaxTTL == 0 {
		c.MaxTTL = DefaultMaxTTL
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = DefaultSessionTimeout
	}
	if c.RetransmitWindow == 0 {
		c.RetransmitWindow = DefaultRetransmitWindow
	}
	if c.IsolateTimeout == 0 {
		c.IsolateTimeout = DefaultIsolateTimeout
	}
	if c.ServerID == 0 {
		c.ServerID = DefaultServerID
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxSessionsPerAddr == 0 {
		c.MaxSessionsPerAddr = DefaultMaxSessionsPerAddr
	}
	if c.MaxLocksPerSession == 0 {
		c.MaxLocksPerSession = DefaultMaxLocksPerSession
	}
	if c.MaxLocks == 0 {
		c.MaxLocks = DefaultMaxLocks
	}
	if c.ConnectRate == 0 {
		c.ConnectRate = DefaultConnectRate
	}
	if c.MaxIsolations == 0 {
		c.MaxIsolations = DefaultMaxIsolations
	}
	if c.MaxWaitersPerKey == 0 {
		c.MaxWaitersPerKey = DefaultMaxWaitersPerKey
	}
	if c.MaxWaitersPerSession == 0 {
		c.MaxWaitersPerSession = DefaultMaxWaitersPerSession
	}
	return c
}

func validMs(d time.Duration) bool {
	return d >= time.Millisecond && d/time.Millisecond <= math.MaxUint32
}

// Validate checks c as it is, defaults not applied (New applies them first), and returns
// the first problem found.
func (c *Config) Validate() error {
	if c.ListenAddr == "" {
		return ErrNoListenAddr
	}
	if c.DataDir == "" {
		return ErrNoDataDir
	}
	if !validMs(c.MaxTTL) {
		return ErrBadMaxTTL
	}
	if !validMs(c.SessionTimeout) || !validMs(c.RetransmitWindow) || !validMs(c.IsolateTimeout) {
		return ErrBadTimeout
	}
	if len(c.Servers) > wire.MaxServers {
		return ErrTooManyServers
	}
	for _, s := range c.Servers {
		if len(s.Addr) > 255 {
			return ErrTooManyServers
		}
	}
	if wire.ConnectedSize(c.Servers) > wire.MaxConnectedFrame {
		return ErrTooManyServers
	}
	if c.Redirect != nil && len(c.Redirect.Addr) > 255 {
		return ErrBadRedirect
	}
	if c.MaxSessions < 0 || c.MaxSessionsPerAddr < 0 || c.MaxLocksPerSession < 0 || c.MaxLocks < 0 ||
		c.ConnectRate < 0 || c.MaxIsolations < 0 || c.MaxWaitersPerKey < 0 || c.MaxWaitersPerSession < 0 {
		return ErrBadCap
	}
	if c.SpinWait < 0 || c.SpinWait > MaxSpinWait {
		return ErrBadSpinWait
	}
	if c.Keys == nil && !c.Insecure && !loopbackListen(c.ListenAddr) {
		return ErrInsecureListen
	}
	if c.Cluster != nil {
		if c.Redirect != nil {
			return ErrClusterRedirect
		}
		if err := c.Cluster.validate(); err != nil {
			return err
		}
		for _, m := range c.Cluster.Members {
			if c.Keys == nil && !c.Insecure && !loopbackListen(m.RaftAddr) {
				return ErrInsecureListen
			}
		}
	}
	return nil
}

// loopbackListen tells whether addr (host:port) can be reached from this host only. An
// empty host, 0.0.0.0 and :: are every address; a name other than localhost may resolve
// to anything.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
