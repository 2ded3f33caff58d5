// Command netmutexd is the netmutex lock server.
//
//	netmutexd -listen 127.0.0.1:15663 -max-ttl 1m -isolate-cmd /usr/local/bin/netmutex-isolate
//
// The isolation command gets the client's IsolationInfo on standard input: bytes the
// client chose. examples/isolate/isolate.sh reads it into a variable, accepts only a
// plain host name and passes it to ssh as one argument after "--". Never interpolate it
// into a command line: with 'ssh "$(cat)" reboot', an IsolationInfo of
// -oProxyCommand=... runs the client's command as the server's user.
//
// SIGINT, SIGTERM or SIGHUP stops it cleanly: running isolation commands are waited for
// (each at most -isolate-timeout), the clean stop is recorded in the data directory, so
// the next start has no lock-delay if no lock was held, and it exits 0. SIGHUP stops
// rather than reopening logs because netmutexd writes its logs to standard error only
// (a terminal, or journald under systemd): it has no log file to reopen, and a hangup is
// what a terminal sends when it closes. Signals that arrive while it stops are ignored.
//
// Exit statuses: 0 after a clean stop, -h or -version; 1 if the server could not start
// (address in use, data directory in use or damaged, unreadable -key-file, a non-loopback
// -listen without keys) or did not stop cleanly; 2 for a bad flag, with one line naming
// the flag and the rule it broke.
//
// dist/netmutexd.service is a hardened systemd unit for it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/server"
)

// Exit statuses.
const (
	exitFailed = 1 // the server could not start, or did not stop cleanly
	exitUsage  = 2 // a bad flag
)

// defaultHTTPAddr is where /metrics, /locks, /healthz and /readyz are served by default:
// loopback, one port above the default UDP port (netmutex locks assumes it).
const defaultHTTPAddr = "127.0.0.1:15664"

// exitError carries the exit status of an error that ends run.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErr is a bad flag: exit status 2.
func usageErr(format string, a ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, a...)}
}

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	if err == nil {
		return
	}
	code := exitFailed
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if code != 0 {
		fmt.Fprintln(os.Stderr, "netmutexd:", oneLine(err))
	}
	os.Exit(code)
}

// oneLine is err's message as one line without the "server: " prefixes the server
// package puts on its errors and on the errors it wraps (the line already starts with
// "netmutexd:"), so "server: DIR: server: data directory in use" reads
// "DIR: data directory in use".
func oneLine(err error) string {
	msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ")), " ")
	parts := strings.Split(msg, ": ")
	kept := parts[:0]
	for _, p := range parts {
		if p != "server" {
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, ": ")
}

// defaultDataDir is $XDG_STATE_HOME/netmutexd, else ~/.local/state/netmutexd.
func defaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "netmutexd")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "netmutexd")
	}
	return "netmutexd-state"
}

// durationLimit is the first duration too long for the protocol's millisecond fields (uint32).
const durationLimit = time.Duration(math.MaxUint32+1) * time.Millisecond

func (d *durationValue) String() string { return time.Duration(*d).String() }

func (d *durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil || v < time.Millisecond || v >= durationLimit {
		return fmt.Errorf("must be a duration (such as 500ms, 30s or 1m) from 1ms to less than %v (2^32 ms)", durationLimit)
	}
	*d = durationValue(v)
	return nil
}

func (d *spinValue) String() string { return time.Duration(*d).String() }

func (d *spinValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 || v > server.MaxSpinWait {
		return fmt.Errorf("must be a duration (such as 50us or 1ms) from 0 (off) to %v", server.MaxSpinWait)
	}
	*d = spinValue(v)
	return nil
}

func (c *capValue) String() string { return strconv.Itoa(int(*c)) }

func (c *capValue) Set(s string) error {
	v, err := strconv.ParseInt(s, 10, 0)
	if err != nil || v < 0 {
		return errors.New("must be a whole number, 0 or more (0: the default)")
	}
	*c = capValue(v)
	return nil
}

func (i *idValue) String() string { return strconv.Itoa(int(*i)) }

func (i *idValue) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 16)
	if err != nil || v == 0 {
		return errors.New("must be a whole number from 1 to 65535")
	}
	*i = idValue(v)
	return nil
}

func (c *choiceValue) String() string {
	if c == nil {
		return ""
	}
	return c.v
}

func (c *choiceValue) Set(s string) error {
	for _, w := range c.ok {
		if s == w {
			c.v = s
			return nil
		}
	}
	return fmt.Errorf("must be %s", c.choice)
}

func (a *addrValue) String() string {
	if a == nil {
		return ""
	}
	return a.v
}

func (a *addrValue) Set(s string) error {
	if s == "" && a.emptyOK {
		a.v = s
		return nil
	}
	if err := checkHostPort(s); err != nil {
		if a.emptyOK {
			return fmt.Errorf("%v, or empty (%s)", err, a.emptyMeans)
		}
		return err
	}
	a.v = s
	return nil
}

func (b *boolValue) String() string   { return strconv.FormatBool(bool(*b)) }
func (b *boolValue) IsBoolFlag() bool { return true }

func (b *boolValue) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("must be true or false")
	}
	*b = boolValue(v)
	return nil
}

func (n *nonEmptyValue) String() string { return string(*n) }

func (n *nonEmptyValue) Set(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	*n = nonEmptyValue(s)
	return nil
}

// version is netmutexd's version as the build recorded it: the module version (a tag, or
// the pseudo-version go build stamps from the VCS), else the VCS revision, else "devel".
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "devel"
	}
	if modified == "true" {
		rev += "+dirty"
	}
	return rev
}

func run(args []string, stdout, stderr io.Writer) error {
	def := server.DefaultConfig()
	fs, f := newFlagSet(def)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs)
			return nil
		}
		return &exitError{exitUsage, err}
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected arguments %q: netmutexd takes flags only", fs.Args())
	}
	if f.version {
		fmt.Fprintf(stdout, "netmutexd %s %s %s/%s\n", version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel.v)); err != nil {
		return usageErr("-log-level %q: must be %s", f.logLevel.v, f.logLevel.choice)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var log *slog.Logger
	if f.logFormat.v == "json" {
		log = slog.New(slog.NewJSONHandler(stderr, hopts))
	} else {
		log = slog.New(slog.NewTextHandler(stderr, hopts))
	}

	cfg := def
	cfg.ListenAddr = f.listen.v
	cfg.DataDir = string(f.data)
	cfg.MaxTTL = time.Duration(f.maxTTL)
	cfg.SessionTimeout = time.Duration(f.sessionTimeout)
	cfg.RetransmitWindow = time.Duration(f.retransmit)
	cfg.IsolateCmd = f.isolateCmd
	cfg.IsolateTimeout = time.Duration(f.isolateTimeout)
	cfg.ServerID = uint16(f.id)
	cfg.Logger = log
	cfg.Insecure = bool(f.insecure)
	cfg.MaxSessions = int(f.maxSessions)
	cfg.MaxSessionsPerAddr = int(f.maxSessionsPerAddr)
	cfg.MaxLocksPerSession = int(f.maxLocksPerSession)
	cfg.MaxLocks = int(f.maxLocks)
	cfg.ConnectRate = int(f.connectRate)
	cfg.MaxIsolations = int(f.maxIsolations)
	cfg.MaxWaitersPerKey = int(f.maxWaitersPerKey)
	cfg.MaxWaitersPerSession = int(f.maxWaitersSess)
	cfg.HTTPAddr = f.http.v
	cfg.SpinWait = time.Duration(f.spinWait)
	if err := clusterFlags(fs, f, &cfg); err != nil {
		return err
	}
	if f.keyFile != "" {
		keys, err := seal.LoadKeyFile(f.keyFile)
		if err != nil {
			return fmt.Errorf("-key-file: %w", err)
		}
		cfg.Keys, cfg.KeyFile = keys, f.keyFile
		log.Info("keys loaded", "file", f.keyFile, "ids", keyIDs(keys), "sealing", keys.Sealing().ID)
	}

	if f.cpuProfile != "" {
		stop, err := startCPUProfile(f.cpuProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer stop()
	}

	// From here a signal stops the server cleanly; before New returns it is noted and
	// acted on once the server serves.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	srv, err := server.New(cfg)
	if err != nil {
		if errors.Is(err, server.ErrInsecureListen) {
			return fmt.Errorf("-listen %s is not a loopback address: serve it with -key-file (or, with no keys, -insecure)", cfg.ListenAddr)
		}
		return err
	}
	// The server has logged its addresses ("netmutexd serving", and "http serving" with
	// -http) and any lock-delay.
	sig := <-sigs
	log.Info("stopping", "signal", sig.String())
	go func() { // later signals do not interrupt the clean stop
		for s := range sigs {
			log.Info("already stopping", "signal", s.String())
		}
	}()
	if err := srv.Close(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	return nil
}

// keyIDs lists the ids of the keys in r, admin keys marked: what a log may say of keys.
func keyIDs(r *seal.Keyring) []string {
	var ids []string
	for id := 1; id <= seal.MaxKeyID; id++ {
		if k := r.Lookup(uint8(id)); k != nil {
			s := strconv.Itoa(id)
			if k.Admin {
				s += "(admin)"
			}
			ids = append(ids, s)
		}
	}
	return ids
}
