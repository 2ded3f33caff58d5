// netmutex run: wait for the key, run the command under it in its own process group, and
// stop the command before the server could let the lock expire.

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/seal"
)

// Defaults of run.
const (
	defaultAddr  = "127.0.0.1:15663" // netmutexd's default -listen
	defaultTTL   = 30 * time.Second
	defaultWait  = time.Minute
	defaultGrace = 5 * time.Second
)

// maxGrace is the longest time between SIGTERM and SIGKILL for a lock of ttl: half of
// Hold's margin (a tenth of ttl, by which fn's context ends before the server could
// first let the lock expire), so that the other half is left for the SIGKILL to be sent
// and the processes to die, for a late timer on a loaded host and for clock rates.
func maxGrace(ttl time.Duration) time.Duration { return ttl / 20 }

// Causes of the end of the wait for the key.
var errWaitExpired = errors.New("not acquired within -wait")

type signalled struct{ sig os.Signal }

func (s *signalled) Error() string { return "interrupted by " + s.sig.String() }

// errLost is what fn returns when the lock ended while COMMAND ran.
type errLost struct{ cause error }

func (e *errLost) Error() string { return e.cause.Error() }

// exitError carries a status that fn decided on (COMMAND could not start).
type exitError struct {
	status int
	msg    string
}

func (e *exitError) Error() string { return e.msg }

type runConfig struct {
	addrs   []string
	ttl     time.Duration
	wait    time.Duration
	grace   time.Duration
	keyFile string
	key     string
	argv    []string
}

func runCommand(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: netmutex run [flags] KEY -- COMMAND [ARGS...]

Waits for the netmutex lock KEY (at most -wait), runs COMMAND (not through a shell)
in a process group of its own with NETMUTEX_KEY and NETMUTEX_FENCE in its environment,
renews the lock while it runs, releases it when COMMAND exits and exits with COMMAND's
status. If the lock is lost or cannot be renewed in time, COMMAND's process group gets
SIGTERM, then SIGKILL after the grace, before the server could let the lock expire,
and netmutex exits 70. SIGINT, SIGTERM and SIGHUP are passed on to COMMAND.

The grace is -grace but at most ttl/20 (half the tenth of the TTL by which the
client's lease ends before the server's): 1.5s with -ttl 30s; raise -ttl for more.

Flags:
`)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), exitStatusText)
	}
	addr := fs.String("addr", defaultAddr, "UDP `addresses` of the netmutexd servers, comma-separated")
	ttl := fs.Duration("ttl", defaultTTL, "lock TTL: renewed every third of it while COMMAND runs; the server lets the lock expire this long after the last renewal it got")
	wait := fs.Duration("wait", defaultWait, "longest wait for KEY (in the server's queue), counted once connected; a short one (1s) makes a try-lock")
	grace := fs.Duration("grace", defaultGrace, "time between SIGTERM and SIGKILL when the lock is lost; capped at ttl/20")
	keyFile := fs.String("key-file", "", "pre-shared key `file` (lines 'ID HEX') to seal every datagram with, as the server's -key-file")
	if st := parseFlags(fs, args); st >= 0 {
		return st
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usageError(fs, "missing KEY")
	}
	cfg := runConfig{ttl: *ttl, wait: *wait, grace: *grace, keyFile: *keyFile, key: rest[0]}
	rest = rest[1:]
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		return usageError(fs, "missing COMMAND after KEY --")
	}
	cfg.argv = rest
	for _, a := range strings.Split(*addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.addrs = append(cfg.addrs, a)
		}
	}
	switch {
	case len(cfg.addrs) == 0:
		return usageError(fs, "-addr: no address")
	case cfg.key == "":
		return usageError(fs, "empty KEY")
	case len(cfg.key) > netmutex.MaxKeySize:
		return usageError(fs, "KEY longer than %d bytes", netmutex.MaxKeySize)
	case cfg.ttl <= 0:
		return usageError(fs, "-ttl must be positive")
	case cfg.wait <= 0:
		return usageError(fs, "-wait must be positive (a short one, e.g. 1s, makes a try-lock)")
	case cfg.grace < 0:
		return usageError(fs, "-grace must not be negative")
	}
	if cfg.keyFile != "" {
		if _, err := seal.LoadKeyFile(cfg.keyFile); err != nil {
			return usageError(fs, "-key-file: %v", err)
		}
	}
	return run(cfg, args, stderr)
}

// runState is what the signal handler, the -wait timer and fn share: whether KEY is
// still awaited, and COMMAND's process group once it runs.
type runState struct {
	mu      sync.Mutex
	waiting bool
	cancel  context.CancelCauseFunc
	pgid    int         // COMMAND's process group; 0 before it starts or once reaped
	pending []os.Signal // signals received between the grant and COMMAND's start
}

// signal ends the wait, or passes sig on to COMMAND.
func (r *runState) signal(sig os.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.waiting:
		r.cancel(&signalled{sig})
	case r.pgid != 0:
		signalGroup(r.pgid, sig)
	default:
		r.pending = append(r.pending, sig)
	}
}

// expire ends the wait if KEY is still awaited.
func (r *runState) expire() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiting {
		r.cancel(errWaitExpired)
	}
}

// granted ends the waiting phase, unless ctx ended first (then false).
func (r *runState) granted(ctx context.Context) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ctx.Err() != nil {
		return false
	}
	r.waiting = false
	return true
}

// started records COMMAND's process group and passes on the signals that came before.
func (r *runState) started(pgid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pgid = pgid
	for _, sig := range r.pending {
		signalGroup(pgid, sig)
	}
	r.pending = nil
}

// reaped forgets COMMAND's process group: its id may be reused.
func (r *runState) reaped() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pgid = 0
}

func run(cfg runConfig, rawArgs []string, stderr io.Writer) int {
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "netmutex: "+format+"\n", args...)
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	st := &runState{waiting: true, cancel: cancel}
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case sig := <-sigs:
				st.signal(sig)
			case <-done:
				return
			}
		}
	}()

	nm, err := netmutex.OpenContext(ctx, cfg.addrs, &netmutex.Options{
		IsolationInfo: isolationInfo(rawArgs),
		KeyFile:       cfg.keyFile,
	})
	if err != nil {
		if s, ok := context.Cause(ctx).(*signalled); ok {
			logf("%v while connecting", s)
			return signalStatus(s.sig)
		}
		logf("cannot connect to %s: %v", strings.Join(cfg.addrs, ","), err)
		return exitUnavailable
	}
	closeWithin := 2 * time.Second // ends the session; shorter once the server stopped answering
	defer func() {
		cctx, ccancel := context.WithTimeout(context.Background(), closeWithin)
		defer ccancel()
		nm.CloseContext(cctx)
	}()

	waitTimer := time.AfterFunc(cfg.wait, st.expire)
	defer waitTimer.Stop()

	status := -1 // COMMAND's, once it ran
	grace := min(cfg.grace, maxGrace(cfg.ttl))
	err = nm.Hold(ctx, cfg.key, cfg.ttl, func(ctx context.Context, l *netmutex.Lock) error {
		if !st.granted(ctx) {
			return context.Cause(ctx)
		}
		waitTimer.Stop()
		s, err := supervise(ctx, st, cfg, l.FenceID(), grace, logf)
		status = s
		return err
	})

	var lost *errLost
	var ee *exitError
	var sg *signalled
	switch {
	case err == nil:
		return status
	case errors.As(err, &lost):
		closeWithin = 300 * time.Millisecond
		return exitLost
	case errors.As(err, &ee):
		logf("%s", ee.msg)
		return ee.status
	case status >= 0 && errors.Is(err, netmutex.ErrIsolated):
		// COMMAND ended within its lease; the release found the lock already gone.
		logf("releasing %q: %v (COMMAND had finished within the lease)", cfg.key, err)
		return status
	case errors.As(context.Cause(ctx), &sg):
		logf("%v while waiting for %q; COMMAND not run", sg, cfg.key)
		return signalStatus(sg.sig)
	case errors.Is(context.Cause(ctx), errWaitExpired):
		logf("%q not acquired within -wait %v; COMMAND not run", cfg.key, cfg.wait)
		return exitNotAcquired
	case errors.Is(err, netmutex.ErrLongKey), errors.Is(err, netmutex.ErrEmptyKey),
		errors.Is(err, netmutex.ErrWrongTTL), errors.Is(err, netmutex.ErrTTLTooLong):
		logf("%q, -ttl %v: %v", cfg.key, cfg.ttl, err)
		return exitUsage
	case errors.Is(err, netmutex.ErrLocked), errors.Is(err, netmutex.ErrTooManyLocks),
		errors.Is(err, netmutex.ErrServerFull):
		logf("%q not acquired: %v; COMMAND not run", cfg.key, err)
		return exitNotAcquired
	case errors.Is(err, netmutex.ErrIsolated):
		logf("%q lost before COMMAND started: %v; COMMAND not run", cfg.key, err)
		return exitNotAcquired
	}
	logf("waiting for %q: %v; COMMAND not run", cfg.key, err)
	return exitUnavailable
}

// supervise runs COMMAND under the lock whose fn context is ctx and returns its status,
// or an *errLost once ctx ended while it ran (COMMAND then stopped), or an *exitError.
func supervise(ctx context.Context, st *runState, cfg runConfig, fence uint64, grace time.Duration, logf func(string, ...any)) (int, error) {
	cmd := exec.Command(cfg.argv[0], cfg.argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "NETMUTEX_KEY="+cfg.key, "NETMUTEX_FENCE="+strconv.FormatUint(fence, 10))
	cmd.SysProcAttr = groupAttr()
	if err := cmd.Start(); err != nil {
		status := exitCannotExec
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			status = exitNotFound
		}
		return -1, &exitError{status, fmt.Sprintf("%q: %v", cfg.argv[0], err)}
	}
	pgid := cmd.Process.Pid
	st.started(pgid)
	exited := make(chan struct{})
	go func() {
		cmd.Wait() // the status is in cmd.ProcessState
		st.reaped()
		close(exited)
	}()

	select {
	case <-exited:
		if ctx.Err() == nil {
			return exitStatus(cmd.ProcessState), nil
		}
		// The lease ended before COMMAND's exit was seen: it may have run unprotected.
		cause := context.Cause(ctx)
		logf("lock on %q lost as COMMAND exited: %v; COMMAND's work may not have been protected to its end", cfg.key, cause)
		return exitStatus(cmd.ProcessState), &errLost{cause}
	case <-ctx.Done():
	}
	cause := context.Cause(ctx)
	logf("lock on %q lost: %v; sending SIGTERM to COMMAND's process group %d, SIGKILL in %v", cfg.key, cause, pgid, grace)
	signalGroup(pgid, syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-exited:
	case <-timer.C:
	}
	// Always: whatever of the group outlived SIGTERM, its leader included, must stop now.
	// The group's id cannot be reused while any member lives.
	signalGroup(pgid, syscall.SIGKILL)
	<-exited
	logf("COMMAND stopped (%s); exiting %d", describe(cmd.ProcessState), exitLost)
	return exitStatus(cmd.ProcessState), &errLost{cause}
}
