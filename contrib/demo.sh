#!/usr/bin/env bash
# Builds PeerShare (release) and runs the demo: a small swarm on loopback — an encrypted,
# upload-limited seeder and two downloaders that also trade chunks with each other, each its
# own supervisor with four worker processes — and checks both copies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/setup.sh
echo "== building (release; the first build takes a few minutes)"
swift build -c release --product peershare
exec .build/release/peershare demo "$@"
