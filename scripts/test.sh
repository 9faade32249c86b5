#!/usr/bin/env bash
# Set everything up, then run the fast tests and the slow ones (real training runs, crash/resume).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser test drives Debian's Chromium through Playwright (never `playwright install`).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium: the browser test will be skipped"
fi
run() {  # pytest exits 5 when a selection holds no test: that is not a failure of the suite
  local status=0
  .venv/bin/python -m pytest "$@" || status=$?
  if [ "$status" -eq 5 ]; then status=0; fi
  return "$status"
}
# The fast suite runs on every core (pyproject.toml's addopts: pytest-xdist -n auto).
run -q -m "not slow" -p no:cacheprovider
# The Ray Data test of the slow suite runs on a local Ray instance (no network once installed).
.venv/bin/python -m pip install -q -e ".[ray]"
# The slow suite in one process: its crash/resume, Ray and two-rank tests time and place their own workers.
run -q -m slow -p no:cacheprovider -n 0
