#!/usr/bin/env bash
# Installs redis-server from Debian's packages when it is missing, for
# `go run ./bench/compare -vs redis` (which runs this script only when given
# -install-redis). Needs root (or sudo) and apt-get; does nothing when
# redis-server is already on PATH. The bench starts its own redis-server on a free
# loopback port and stops it; the service the package may start is left alone.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
	echo "redis-server already installed: $(command -v redis-server)"
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-redis.sh: no apt-get here; install redis-server (7.x) by hand" >&2
	exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "install-redis.sh: not root and no sudo; run as root: apt-get install -y redis-server" >&2
		exit 1
	fi
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends redis-server
command -v redis-server
redis-server --version
