// Command netmutex runs a program under a netmutex lock, and shows which locks a
// netmutexd holds.
//
//	netmutex run [-addr 127.0.0.1:15663[,more]] [-ttl 30s] [-wait 1m] [-grace 5s] [-key-file FILE] KEY -- COMMAND [ARGS...]
//	netmutex locks [-http 127.0.0.1:15664] [-json] [-timeout 5s]
//
// Install it with
//
//	go install github.com/netmutex/netmutex/cmd/netmutex@latest
//
// # netmutex run
//
// run connects to the netmutexd at -addr (a comma-separated list: the servers of a
// cluster, tried at once), waits in the server's first-come-first-served queue for KEY
// for at most -wait, then runs COMMAND with ARGS: executed directly, not through a
// shell, with standard input, output and error passed through and two variables added
// to its environment:
//
//	NETMUTEX_KEY    the key
//	NETMUTEX_FENCE  the lock's fencing token, a decimal number greater than that of
//	                every earlier grant of any key by the server: pass it on to the
//	                storage COMMAND writes to, which should refuse a smaller one
//
// While COMMAND runs, the lock is renewed every third of -ttl. When COMMAND exits the
// lock is released, and netmutex exits with COMMAND's status (128+N when a signal N
// killed it, as shells report it).
//
// If the lock is lost (the server isolated this client, or forgot the lock) or cannot be
// renewed in time (the server stopped answering), netmutex stops COMMAND before the
// server could let the lock expire and hand KEY to someone else: the client counts its
// lease from the send time of the last renewal that was answered and ends it a tenth of
// -ttl early (the margin); then it sends SIGTERM to COMMAND's process group, SIGKILL
// after the grace, and exits 70. The grace is -grace, but never more than half the
// margin (ttl/20: 1.5s with -ttl 30s, 100ms with -ttl 2s): the other half is left for
// the SIGKILL to be sent and land, for a netmutex that the scheduler or a loaded host
// runs late, and for the clocks of client and server running at slightly different
// rates. A command that needs a longer grace to shut down cleanly needs a longer -ttl
// (-ttl 2m allows -grace 6s).
//
// COMMAND runs in a process group of its own, so that a lost lock stops all of it, its
// children included. SIGINT, SIGTERM and SIGHUP sent to netmutex are passed on to that
// process group; netmutex then waits for COMMAND, releases the lock and exits with
// COMMAND's status. Received while still waiting for KEY, they end the wait (the server
// forgets the waiter) and netmutex exits 128+N. Because its group is not the terminal's
// foreground group, an interactive COMMAND that reads the terminal is stopped (SIGTTIN):
// netmutex is meant for scripts and cron jobs. On Linux, COMMAND is also killed if
// netmutex itself dies (SIGKILL, crash); the server then isolates netmutex's session
// once the lock expires, as for any client that died holding a lock.
//
// The session's IsolationInfo, handed to the server's isolation command should it ever
// isolate this client, is
//
//	Hostname: HOST
//	Pid: PID
//	Command: netmutex run ... KEY -- COMMAND ARGS...
//
// cut to 400 bytes. The "Hostname:" line is what examples/isolate/isolate.sh reads. The
// server shows it to whoever reads its /locks endpoint (netmutex locks): pass secrets to
// COMMAND in its environment or a file, never in ARGS.
//
// # netmutex locks
//
// locks fetches http://ADDR/locks from the HTTP endpoint of a netmutexd (its -http
// flag) and prints the held locks sorted by key: key, fence, the time left before the
// lock expires, how many wait for it, and the holder's IsolationInfo on one line (line
// breaks as "; ", control characters escaped; the session id when it is empty); then
// the number of sessions and any lock-delay in force. With -json it prints the server's
// JSON as it came, indented.
//
// # Exit statuses
//
//	0-255  run: COMMAND's own status (128+N: killed by signal N)
//	64     usage: bad flags or arguments, an unreadable -key-file, a key or TTL
//	       the server refuses (EX_USAGE)
//	69     the server is unavailable: run could not connect (no answer, key
//	       refused, too many sessions) or the server stopped answering before
//	       COMMAND started; locks could not reach the HTTP endpoint or got an
//	       error status (EX_UNAVAILABLE)
//	70     run: the lock was lost or could not be renewed in time while COMMAND
//	       ran; COMMAND was stopped (SIGTERM, then SIGKILL) (EX_SOFTWARE)
//	75     run: KEY was not acquired within -wait (or the server's queue for it
//	       is full, or the lock was lost before COMMAND started); COMMAND did not
//	       run (EX_TEMPFAIL)
//	76     locks: the endpoint answered with something other than the expected
//	       JSON (EX_PROTOCOL)
//	126    run: COMMAND could not be executed (as shells report it)
//	127    run: COMMAND was not found (as shells report it)
//	128+N  run: netmutex got signal N while waiting for KEY; COMMAND did not run
//
// A COMMAND that itself exits 64, 69, 70, 75, 126 or 127 cannot be told from netmutex's
// own statuses but by the message netmutex prints on standard error ("netmutex: ...")
// when the status is its own.
//
// # Examples
//
// Run a nightly job on exactly one of the machines whose crontab lists it; a machine
// that finds the job running elsewhere waits at most a minute, then gives up (75):
//
//	0 3 * * * netmutex run -addr lock1:15663,lock2:15663 -key-file /etc/netmutex/keys -wait 1m nightly-report -- /usr/local/bin/nightly-report --since yesterday
//
// Skip the run if another one holds the key (a try-lock):
//
//	netmutex run -wait 1s backup -- restic backup /srv || [ $? -eq 75 ]
//
// Pass the fence to the storage (sh -c only because the command needs a variable):
//
//	netmutex run deploy -- sh -c 'deploy --fence "$NETMUTEX_FENCE"'
//
// See who holds what:
//
//	$ netmutex locks
//	KEY             FENCE  EXPIRES IN  WAITERS  HOLDER
//	backup          12     2.5s        3        Hostname: db1; Pid: 4242; Command: netmutex run -wait 1s backup -- restic backup /srv
//	nightly-report  9      28.1s       0        Hostname: app2; Pid: 77; Command: netmutex run -wait 1m nightly-report -- /usr/local/bin/nightly-report
//
//	2 locks, 5 sessions
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// Exit statuses of netmutex itself (see the package documentation), from sysexits.h
// where one fits.
const (
	exitUsage       = 64  // EX_USAGE
	exitUnavailable = 69  // EX_UNAVAILABLE
	exitLost        = 70  // EX_SOFTWARE
	exitNotAcquired = 75  // EX_TEMPFAIL
	exitProtocol    = 76  // EX_PROTOCOL
	exitCannotExec  = 126 // as sh
	exitNotFound    = 127 // as sh
)

const usageText = `usage:
  netmutex run [-addr 127.0.0.1:15663[,more]] [-ttl 30s] [-wait 1m] [-grace 5s] [-key-file FILE] KEY -- COMMAND [ARGS...]
  netmutex locks [-http 127.0.0.1:15664] [-json] [-timeout 5s]

run waits for the netmutex lock KEY (at most -wait), runs COMMAND under it with
NETMUTEX_KEY and NETMUTEX_FENCE in its environment, renews the lock while COMMAND
runs, releases it when COMMAND exits and exits with COMMAND's status. If the lock is
lost or cannot be renewed in time, COMMAND's process group gets SIGTERM, then SIGKILL,
before the server could let the lock expire.

locks lists the locks a netmutexd holds, from its HTTP endpoint (netmutexd -http).

"netmutex run -h" and "netmutex locks -h" describe the flags.
` + exitStatusText

const exitStatusText = `
exit statuses:
  0-255  run: COMMAND's status (128+N: COMMAND killed by signal N)
  64     usage error, unreadable -key-file, key or TTL refused by the server
  69     server unavailable (run: cannot connect, or it stopped answering before
         COMMAND started; locks: HTTP endpoint unreachable or an error status)
  70     run: lock lost or not renewed in time while COMMAND ran; COMMAND was
         stopped with SIGTERM, then SIGKILL
  75     run: KEY not acquired within -wait (or its queue is full); COMMAND did
         not run
  76     locks: the endpoint's answer is not the expected JSON
  126    run: COMMAND cannot be executed
  127    run: COMMAND not found
  128+N  run: netmutex got signal N while waiting for KEY; COMMAND did not run
`

func main() {
	os.Exit(mainStatus(os.Args[1:], os.Stdout, os.Stderr))
}

// mainStatus runs the subcommand args name and returns the exit status.
func mainStatus(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return runCommand(args[1:], stderr)
	case "locks":
		return locksCommand(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usageText)
		return 0
	}
	fmt.Fprintf(stderr, "netmutex: unknown command %q\n\n%s", args[0], usageText)
	return exitUsage
}

// parseFlags parses args into fs (whose output is stderr) and returns the status to exit
// with, or -1 to go on.
func parseFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	return -1
}

// usageError prints msg and the flag set's usage, and returns exitUsage.
func usageError(fs *flag.FlagSet, format string, args ...any) int {
	fmt.Fprintf(fs.Output(), "netmutex %s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fs.Usage()
	return exitUsage
}
