#!/usr/bin/env bash
# Runs the original example (examples/original) against a real netmutexd, and cleans up:
#
#   bash scripts/example.sh
#
# It builds netmutexd and the example into a temporary directory, starts netmutexd with
# no flags but a throwaway data directory (XDG_STATE_HOME points into the temporary
# directory; the default data directory is $XDG_STATE_HOME/netmutexd), waits until it
# serves, runs the example, and stops the server with SIGTERM and waits for it, always:
# also when a step fails or the script is interrupted. Nothing is left running or on
# disk, so it can be run again at once.
#
# The example talks to the default address 127.0.0.1:15663 (it is the original's code),
# so the server listens there. If that port is taken (by a netmutexd left running, for
# instance), the server cannot start and the script says so rather than letting the
# example talk to a stranger.
#
# Exit status: 0 when the example printed "unlocked and closed" and the server stopped
# cleanly; non-zero otherwise, with the server's log.
set -euo pipefail
cd "$(dirname "$0")/.."

addr=127.0.0.1:15663 # netmutexd's default -listen, and the example's address
work=$(mktemp -d "${TMPDIR:-/tmp}/netmutex-example.XXXXXX")
server=""

stop_server() {
	[ -n "$server" ] || return 0
	local pid=$server status=0
	server=""
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		# netmutexd stops within a second; give it 10 before SIGKILL.
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then
			echo "example.sh: netmutexd ($pid) still running 10s after SIGTERM: SIGKILL" >&2
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	wait "$pid" || status=$?
	return "$status"
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if ! stop_server; then
		echo "example.sh: netmutexd did not stop cleanly; its log:" >&2
		cat "$work/netmutexd.log" >&2 2>/dev/null || true
		[ "$status" != 0 ] || status=1
	fi
	rm -rf "$work"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== building netmutexd and examples/original into $work"
go build -o "$work/netmutexd" ./cmd/netmutexd
go build -o "$work/original" ./examples/original

echo "== starting netmutexd on $addr (data directory $work/state/netmutexd)"
XDG_STATE_HOME="$work/state" "$work/netmutexd" -listen "$addr" 2>"$work/netmutexd.log" &
server=$!
for _ in $(seq 100); do
	grep -q serving "$work/netmutexd.log" && break
	if ! kill -0 "$server" 2>/dev/null; then
		wait "$server" || true
		server=""
		echo "example.sh: netmutexd exited at start; its log:" >&2
		cat "$work/netmutexd.log" >&2
		if grep -q "address already in use" "$work/netmutexd.log"; then
			echo "example.sh: $addr is taken, perhaps by a netmutexd left running (ss -ulpn 'sport = :${addr##*:}' shows it); stop it and run again" >&2
		fi
		exit 1
	fi
	sleep 0.1
done
if ! grep -q serving "$work/netmutexd.log"; then
	echo "example.sh: netmutexd not serving after 10s; its log:" >&2
	cat "$work/netmutexd.log" >&2
	exit 1
fi
cat "$work/netmutexd.log"

echo "== running examples/original"
status=0
out=$(timeout 60 "$work/original") || status=$?
printf '%s\n' "$out"
if [ "$status" != 0 ]; then
	echo "example.sh: examples/original failed (exit status $status)" >&2
	exit 1
fi
if ! grep -q "unlocked and closed" <<<"$out"; then
	echo "example.sh: examples/original did not print \"unlocked and closed\"" >&2
	exit 1
fi

echo "== stopping netmutexd (SIGTERM)"
if ! stop_server; then
	echo "example.sh: netmutexd did not stop cleanly; its log:" >&2
	cat "$work/netmutexd.log" >&2
	exit 1
fi
tail -n 2 "$work/netmutexd.log"
echo "== ok: the example ran and netmutexd stopped cleanly"
