// Isolation runs: the operator's isolation command, one goroutine per isolated
// session, and the commands that tell the machine a run has ended.

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

// startIsolation runs the isolation command for iso in its own goroutine; its end is
// reported on s.isoDone and becomes a KindIsolationDone command. Called by the loop only.
func (s *Server) startIsolation(iso Isolation) {
	s.isoWG.Add(1)
	go func() {
		defer s.isoWG.Done()
		err := s.runIsolation(iso)
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

func (s *Server) runIsolation(iso Isolation) error {
	ctx, cancel := context.WithTimeout(s.isoCtx, s.cfg.IsolateTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", s.cfg.IsolateCmd)
	cmd.Stdin = strings.NewReader(iso.Info)
	cmd.Env = append(cmd.Environ(), fmt.Sprintf("NETMUTEX_SESSION=%016x", iso.Session))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = isolateWaitDelay
	start := time.Now()
	s.log.Warn("isolating session", "session", fmt.Sprintf("%016x", iso.Session), "cmd", s.cfg.IsolateCmd)
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("%w after %v: %v", ErrIsolationTimeout, s.cfg.IsolateTimeout, err)
	}
	text := out.String()
	if len(text) > maxIsolateOutput {
		text = text[:maxIsolateOutput]
	}
	attrs := []any{"session", fmt.Sprintf("%016x", iso.Session), "took", time.Since(start), "output", text}
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

// collectIsolations turns finished isolation runs into commands, without blocking.
func (s *Server) collectIsolations() {
	for {
		select {
		case sid := <-s.isoDone:
			s.cmds = append(s.cmds, Command{Kind: KindIsolationDone, Session: sid, Tag: -1})
		default:
			return
		}
	}
}
