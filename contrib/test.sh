#!/usr/bin/env bash
# Runs every test: the Swift unit tests, then the end-to-end tests that start real
# `peershare` processes on loopback. Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."

PEERSHARE_SETUP_TESTS=1 bash contrib/setup.sh

# Builds with `swift build ARGS`; fails if the compiler warns about our own code: the code
# is kept warning-free in the Swift 6 language mode (dependencies' warnings are theirs).
build() {
  local log status
  log=$(mktemp)
  set +e
  swift build "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then rm -f "$log"; return "$status"; fi
  # Compiler warnings name a file (PATH:LINE:COL: warning:); SwiftPM's notes about a
  # dependency's layout ("warning: 'pkg': found 1 file(s) which are unhandled") do not.
  if grep -E "^/[^ ]+:[0-9]+:[0-9]+: warning:" "$log" | grep -v "/.build/" | grep -q .; then
    echo "FAIL: the build printed warnings (PeerShare builds with zero warnings):"
    grep -E "^/[^ ]+:[0-9]+:[0-9]+: warning:" "$log" | grep -v "/.build/" | sort -u
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

echo "== building (debug, with tests; any warning fails)"
build --build-tests
echo "== building peershare (release, for the 1,000-node DHT swarm; any warning fails)"
build -c release --product peershare

echo "== unit tests"
swift test --skip-build

echo "== fuzzing every parser of outside bytes, a few seconds each (libFuzzer + ASan)"
bash contrib/fuzz.sh "${PEERSHARE_FUZZ_SECONDS:-5}"

echo "== end-to-end tests (real processes on loopback)"
# Debian's pytest is installed for /usr/bin/python3; another python3 may come first on PATH.
python=/usr/bin/python3
"$python" -m pytest --version >/dev/null 2>&1 || python=python3
# -s shows the figures the DHT swarm test prints (hop counts per phase).
PEERSHARE_BIN="$PWD/.build/debug/peershare" PEERSHARE_RELEASE_BIN="$PWD/.build/release/peershare" \
  "$python" -m pytest -q -s -p no:cacheprovider Tests/e2e
