#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the browser test when /usr/bin/chromium
# is missing. Idempotent and quiet; Playwright drives this binary and never downloads its own.
# Where it cannot install, it warns and succeeds (the browser test then skips), except under
# CI=... where the test must run, so it fails.
set -euo pipefail
CHROMIUM="${LUMEN_CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0

give_up() {
  echo "ensure-chromium: $1" >&2
  if [ -n "${CI:-}" ]; then exit 1; fi
  echo "ensure-chromium: tests/integration/test_browser.py will be skipped" >&2
  exit 0
}

command -v apt-get >/dev/null 2>&1 ||
  give_up "no $CHROMIUM and no apt-get; install Chromium and set LUMEN_CHROMIUM to its path"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || give_up "installing chromium needs root or sudo"
  SUDO="sudo"
fi
echo "Installing chromium and chromium-driver for the browser test ..."
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# A font comes along so pages render text on base images that ship none.
if ! { $SUDO apt-get update -qq &&
       $SUDO apt-get install -y -qq --no-install-recommends \
         chromium chromium-driver fonts-dejavu-core; } >"$log" 2>&1; then
  cat "$log" >&2
  give_up "apt-get could not install chromium (output above)"
fi
[ -x "$CHROMIUM" ] || give_up "chromium was installed but $CHROMIUM is missing"
