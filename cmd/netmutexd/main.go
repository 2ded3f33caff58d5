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
// SIGINT or SIGTERM stops it cleanly: the clean stop is recorded in the data directory,
// so the next start has no lock-delay if no lock was held.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/server"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "netmutexd:", err)
		os.Exit(1)
	}
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

func run(args []string) error {
	def := server.DefaultConfig()
	fs := flag.NewFlagSet("netmutexd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: netmutexd [flags]\n\nThe netmutex lock server.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	listen := fs.String("listen", def.ListenAddr, "UDP `address` to serve on")
	dataDir := fs.String("data", defaultDataDir(), "data `directory` (boot count, fence high-water mark, clean-stop flag); created if missing")
	maxTTL := fs.Duration("max-ttl", def.MaxTTL, "longest lock TTL granted; also the lock-delay after an unclean start")
	sessTimeout := fs.Duration("session-timeout", def.SessionTimeout, "close a session silent for this long (isolating it first if it holds locks)")
	retransmit := fs.Duration("retransmit-window", def.RetransmitWindow, "advertised limit on how long clients retransmit a request")
	isolateCmd := fs.String("isolate-cmd", "", "`command` run with /bin/sh -c when a session is isolated, its IsolationInfo on stdin only; 8 run at once at most, the rest queue. The info is the client's: never interpolate it into a command line ('ssh \"$(cat)\" reboot' runs an info of -oProxyCommand=...). Safe example: /usr/local/bin/netmutex-isolate, a copy of examples/isolate/isolate.sh. Empty: release the locks at once")
	isolateTimeout := fs.Duration("isolate-timeout", def.IsolateTimeout, "kill the isolation command after this long and release the keys")
	id := fs.Uint("id", uint(def.ServerID), "this server's `id` (1-65535), advertised to clients")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	keyFile := fs.String("key-file", "", "seal every datagram with the pre-shared keys of `file` (lines 'ID HEX [admin]': the first key seals, all open; admin keys may send UNLOCKALL); without it the server serves loopback only")
	maxWaitKey := fs.Int("max-waiters-per-key", def.MaxWaitersPerKey, "most LOCKs waiting in one key's queue; more are refused TOO_MANY_WAITERS")
	maxWaitSess := fs.Int("max-waiters-per-session", def.MaxWaitersPerSession, "most waiting LOCKs and LOCKMANYs of one session; more are refused TOO_MANY_WAITERS")
	insecure := fs.Bool("insecure", false, "without -key-file, serve a non-loopback address anyway: anyone on the network path can then act for a client")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("-log-level: %w", err)
	}
	if *id == 0 || *id > 0xffff {
		return fmt.Errorf("-id %d: must be 1 to 65535", *id)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	cfg := def
	cfg.ListenAddr = *listen
	cfg.DataDir = *dataDir
	cfg.MaxTTL = *maxTTL
	cfg.SessionTimeout = *sessTimeout
	cfg.RetransmitWindow = *retransmit
	cfg.IsolateCmd = *isolateCmd
	cfg.IsolateTimeout = *isolateTimeout
	cfg.ServerID = uint16(*id)
	cfg.Logger = log
	cfg.Insecure = *insecure
	cfg.MaxWaitersPerKey = *maxWaitKey
	cfg.MaxWaitersPerSession = *maxWaitSess
	if *keyFile != "" {
		keys, err := seal.LoadKeyFile(*keyFile)
		if err != nil {
			return fmt.Errorf("-key-file: %w", err)
		}
		cfg.Keys, cfg.KeyFile = keys, *keyFile
		log.Info("keys loaded", "file", *keyFile, "ids", keyIDs(keys), "sealing", keys.Sealing().ID)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	if srv.LockDelay() {
		log.Warn("lock-delay in force: the last stop may have lost locks; LOCK answers LOCK_DELAY", "for", cfg.MaxTTL)
	} else {
		log.Info("no lock-delay")
	}
	sig := <-sigs
	log.Info("stopping", "signal", sig.String())
	return srv.Close()
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
