// Isolation runs: the operator's isolation command, at most Config.MaxIsolations at
// once and the rest queued, one per isolated session, and the commands that tell the
// machine a run has ended. docs/ISOLATION.md is the operator's side of it.

package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// isolateWaitDelay bounds how long a killed isolation command may keep its output pipes
// open through children it left behind. A second: a child that has not exited that long
// after the kill will not, and the run must end so that the keys can be released.
const isolateWaitDelay = time.Second

// maxIsolateOutput bounds how much of a command's output is logged. 1 KB holds an error
// message or a short report; a command that prints without end cannot flood the log.
const maxIsolateOutput = 1024

// isoRuns is the loop's account of isolation runs. At most Config.MaxIsolations
// commands run at once (each is a process and an OS thread blocked in wait4: unbounded,
// a flood of isolations exhausted the server's threads); the rest wait in FIFO order. A
// session has at most one run queued or running: the machine asks once per isolation,
// and a repeated request for the same session is dropped. Owned by the loop.
type isoRuns struct {
	queue   []isolation         // waiting runs, oldest first, from head
	head    int                 // queue[:head] have been started
	pending map[uint64]struct{} // sessions with a run queued or running
	running int                 // runs started whose end is not collected yet
	gaveUp  []uint64            // sessions whose run was given up on unstarted
}

// queued is the number of runs waiting for a free slot.
func (r *isoRuns) queued() int { return len(r.queue) - r.head }

// isoQueueCap bounds the waiting runs: Config.MaxSessions. Each waiting run is a live
// session the machine keeps while it is isolating (its keys held), so the queue cannot
// outgrow the session table, and its memory (an id and the IsolationInfo string the
// session already holds) is bounded by it. Reaching it means the machine let more
// sessions be isolating than its cap; the run is then given up on at once, as one that
// timed out is, and its keys are released: the server must not grow without bound.
func (s *Server) isoQueueCap() int { return max(s.cfg.MaxSessions, 1) }

// startIsolation queues the isolation command for iso and starts it if a slot is free.
// Its end is reported on s.isoDone and becomes a kindIsolationDone command, which
// releases the session's keys. Called by the loop only.
func (s *Server) startIsolation(iso isolation) {
	r := &s.isoRuns
	if r.pending == nil {
		r.pending = make(map[uint64]struct{})
	}
	if _, dup := r.pending[iso.Session]; dup {
		return // one run per session: the one queued or running releases its keys
	}
	if r.queued() >= s.isoQueueCap() {
		s.stats.isoFailed.Add(1)
		s.log.Error("isolation queue full: giving up on the run, releasing the keys",
			"session", fmt.Sprintf("%016x", iso.Session), "queued", r.queued(), "running", r.running)
		r.gaveUp = append(r.gaveUp, iso.Session)
		return
	}
	r.pending[iso.Session] = struct{}{}
	if r.head > 0 && r.head == len(r.queue) {
		clear(r.queue)
		r.queue, r.head = r.queue[:0], 0
	}
	r.queue = append(r.queue, iso)
	if r.running >= s.maxIsolations() {
		s.log.Info("isolation queued", "session", fmt.Sprintf("%016x", iso.Session),
			"queued", r.queued(), "running", r.running)
	}
	s.runQueuedIsolations()
}

// maxIsolations is Config.MaxIsolations, at least 1.
func (s *Server) maxIsolations() int { return max(s.cfg.MaxIsolations, 1) }

// runQueuedIsolations starts waiting runs, oldest first, while slots are free.
func (s *Server) runQueuedIsolations() {
	r := &s.isoRuns
	for r.running < s.maxIsolations() && r.head < len(r.queue) {
		iso := r.queue[r.head]
		r.queue[r.head] = isolation{}
		r.head++
		r.running++
		s.launchIsolation(iso)
	}
	// Keep the backing array from growing with the total: move the waiting runs to the
	// front once the started ones are most of it.
	if r.head > 64 && r.head*2 > len(r.queue) {
		n := copy(r.queue, r.queue[r.head:])
		clear(r.queue[n:])
		r.queue, r.head = r.queue[:n], 0
	}
}

// launchIsolation runs the isolation command for iso in a goroutine of its own.
func (s *Server) launchIsolation(iso isolation) {
	s.isoWG.Add(1)
	s.stats.isoStarted.Add(1)
	go func() {
		defer s.isoWG.Done()
		start := time.Now()
		err := s.runIsolation(iso)
		s.metrics.isoDuration.observeDuration(time.Since(start))
		s.stats.isoRun.Add(1)
		if err != nil {
			s.stats.isoFailed.Add(1)
		}
		select {
		case s.isoDone <- iso.Session:
		case <-s.loopDone: // stopping: nobody will release the keys now
		}
	}()
}

// dropQueuedIsolations, at the loop's end, forgets the runs that never started: the
// keys they held are lost with the server's memory (a stop with locks held, so the next
// start has a lock-delay). Running ones are waited for (Close) or killed (Abort).
func (s *Server) dropQueuedIsolations() {
	r := &s.isoRuns
	if n := r.queued(); n > 0 {
		s.log.Warn("stopping with isolation runs not started", "queued", n, "running", r.running)
	}
	clear(r.queue)
	r.queue, r.head = r.queue[:0], 0
}

// runIsolation runs the command: /bin/sh -c Config.IsolateCmd, the IsolationInfo on
// standard input and nowhere else (not in its arguments, not in its environment: the
// client chose those bytes, and a command line would let them steer the command).
func (s *Server) runIsolation(iso isolation) error {
	ctx, cancel := context.WithTimeout(s.isoCtx, s.cfg.IsolateTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", s.cfg.IsolateCmd)
	cmd.Stdin = strings.NewReader(iso.Info)
	cmd.Env = append(cmd.Environ(), fmt.Sprintf("NETMUTEX_SESSION=%016x", iso.Session))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = isolateWaitDelay
	start := time.Now()
	s.log.Warn("isolating session", "session", fmt.Sprintf("%016x", iso.Session), "info_len", len(iso.Info),
		"cmd", s.cfg.IsolateCmd)
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("%w after %v: %v", ErrIsolationTimeout, s.cfg.IsolateTimeout, err)
	}
	text := out.String()
	if len(text) > maxIsolateOutput {
		text = text[:maxIsolateOutput]
	}
	attrs := []any{"session", fmt.Sprintf("%016x", iso.Session), "info_len", len(iso.Info),
		"took", time.Since(start), "output", text}
	var exit *exec.ExitError
	switch {
	case err == nil:
		s.log.Info("isolation command done", append(attrs, "exit", 0)...)
	case errors.As(err, &exit):
		s.log.Error("isolation command failed", append(attrs, "exit", exit.ExitCode(), "err", err)...)
	default:
		s.log.Error("isolation command failed", append(attrs, "err", err)...)
	}
	return err
}

// collectIsolations turns finished isolation runs into commands, without blocking,
// and starts waiting runs in the slots they freed.
func (s *Server) collectIsolations() {
	r := &s.isoRuns
	for _, sid := range r.gaveUp {
		s.cmds = append(s.cmds, command{kind: kindIsolationDone, Session: sid, Tag: -1})
	}
	r.gaveUp = r.gaveUp[:0]
	for {
		select {
		case sid := <-s.isoDone:
			delete(r.pending, sid)
			r.running--
			s.cmds = append(s.cmds, command{kind: kindIsolationDone, Session: sid, Tag: -1})
		default:
			s.runQueuedIsolations()
			return
		}
	}
}
