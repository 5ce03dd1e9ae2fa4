#!/usr/bin/env bash
# Installs redis-server from the OS packages when it is missing (Debian/Ubuntu or macOS).
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
echo "redis-server not found; installing it ..."
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server
elif command -v brew >/dev/null 2>&1; then
  brew install redis
else
  echo "Please install redis-server (https://redis.io/download) and run again." >&2
  exit 1
fi
