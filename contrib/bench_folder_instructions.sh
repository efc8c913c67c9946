#!/bin/bash
# Instructions (user space) of every PeerShare process while one folder is shared and
# fetched once, 1 seeder -> 1 downloader on loopback, for one or more builds in the same run.
# A CPU figure for the per-chunk and per-file work that a noisy machine's seconds cannot
# show (issue 13, item 6); `bench_instructions.py` does the same for one file at two sizes.
#
#   bash contrib/bench_folder_instructions.sh FOLDER BINARY [BINARY...]
#
# Make a folder of 10,000 files of 10 KiB with
#   /usr/bin/python3 contrib/bench_swarm.py --make-folder /dev/shm/many10k 10000 10240
#
# For each binary, the `share` side runs under valgrind's callgrind while a `get` of the
# same binary (not measured) fetches, then the `get` side runs under callgrind from a
# `share` that is not measured. Every figure includes the process's start-up; the same
# folder and runs make builds comparable. As in `bench_instructions.py`: the workers run
# with PEERSHARE_SANDBOX=off (valgrind's own system calls would break their seccomp
# allowlists), a stripped copy of the binary is measured, and SHA-256 runs its portable
# code under valgrind (most of each hash worker's figure).
set -euo pipefail
folder=$(realpath "$1")
shift
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 69; }
work=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Run as one command (env execs valgrind), so that the pid `$!` names is valgrind's own.
callgrind=(env PEERSHARE_SANDBOX=off valgrind --tool=callgrind --trace-children=yes --dump-instr=no
  "--callgrind-out-file=$work/cg/cg.%p")
wait_link() { while [ ! -s "$1" ]; do sleep 0.2; done; head -1 "$1" | cut -d'?' -f1; }
report() {
  for f in "$1"/cg.*; do
    role=$(grep -m1 '^cmd:' "$f" | awk '{ print ($3 == "worker") ? $4 : "supervisor" }')
    total=$(grep -m1 -E '^(summary|totals):' "$f" | awk '{ print $2 }')
    printf '  %-10s %-11s %8.3f G\n' "$2" "$role" "$(echo "$total / 1000000000" | bc -l)"
  done | sort
}
for binary in "$@"; do
  measured="$work/peershare"
  strip -g -o "$measured" "$binary"
  echo "== $binary"
  for side in share get; do
    rm -rf "$work/out" "$work/cg" "$work/link"
    mkdir -p "$work/out" "$work/cg"
    seed_port=$(port)
    if [ "$side" = share ]; then
      "${callgrind[@]}" "$measured" share "$folder" --listen "127.0.0.1:$seed_port" --no-dht \
        > "$work/link" 2>/dev/null &
    else
      "$binary" share "$folder" --listen "127.0.0.1:$seed_port" --no-dht > "$work/link" 2>/dev/null &
    fi
    seeder=$!
    pids=("$seeder")
    link=$(wait_link "$work/link")
    getter=("$binary")
    [ "$side" = get ] && getter=("${callgrind[@]}" "$measured")
    "${getter[@]}" get "$link" -o "$work/out" --no-dht --listen "127.0.0.1:$(port)" \
      --peer "127.0.0.1:$seed_port" > /dev/null 2>&1
    kill -INT "$seeder"
    wait "$seeder" || true
    report "$work/cg" "$side"
  done
done
