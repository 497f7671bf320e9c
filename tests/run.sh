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

exec python3 -m pytest "$@"
