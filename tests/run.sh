#!/usr/bin/env bash
# Run Lifeline's test suite on a fresh machine: installs what the tests need, then pytest.
# Usage: bash tests/run.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"

# The browser tests drive Debian's Chromium (a browser cannot be downloaded at run time).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "error: the browser tests need Debian's chromium (apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
fi

# The observability test starts Debian's Prometheus against a running stack (tests/test_observability.py).
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's prometheus for the observability test..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  else
    echo "error: the observability test needs Debian's prometheus (apt-get install prometheus)" >&2
    exit 1
  fi
fi

# The minified client is checked by rebuilding it with the terser that made it (npm, build time only).
TERSER_VERSION=5.51.4
if ! command -v terser >/dev/null 2>&1 || [ "$(terser --version)" != "terser $TERSER_VERSION" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "installing terser $TERSER_VERSION from npm for the client build test..."
    npm install -g --silent "terser@$TERSER_VERSION" >/dev/null
  else
    echo "error: the client build test needs npm (apt-get install npm)" >&2
    exit 1
  fi
fi

exec python3 -m pytest "$@"
