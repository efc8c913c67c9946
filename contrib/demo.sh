#!/usr/bin/env bash
# Builds PeerShare (release) and runs the demo: a seeder and a downloader, each its own
# supervisor with four worker processes, moving a generated file over loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/setup.sh
echo "== building (release; the first build takes a few minutes)"
swift build -c release --product peershare
exec .build/release/peershare demo "$@"
