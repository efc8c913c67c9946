#!/usr/bin/env bash
# Benchmarks for docs/BENCHMARKS.md: hashing beside b3sum, openssl and b2sum on the same file,
# loopback TCP (iperf3), 1 GiB swarm rows (1->1, 4->1, 1->8) beside libtorrent with
# CPU per GiB and peak RSS of every process, share's start-up beside mktorrent, the
# pipeline stages, and instructions per GiB
# under callgrind (1 -> 1, beside libtorrent, b3sum and openssl: the figure that holds on a busy
# machine).
# Usage: bash contrib/bench.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
bash contrib/setup.sh
for tool in iperf3 b3sum; do
  command -v $tool >/dev/null || { sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo; $sudo apt-get install -y -qq $tool >/dev/null; }
done
swift build -c release --product peershare >/dev/null
bin=.build/release/peershare

# tmpfs when there is one: this measures PeerShare, not the disk.
work=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT
file="$work/bench.bin"
head -c $((size_mib * 1048576)) /dev/urandom > "$file"
cat "$file" > /dev/null   # into the page cache, so every tool reads from memory

echo "== hashing ${size_mib} MiB (cached), same file, same run"
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$s $e"; }
for tool in "b3sum --num-threads 1 --no-mmap" "openssl dgst -sha256" "b2sum" "sha256sum"; do
  read -r s e < <(t $tool "$file")
  awk -v n="$tool" -v s="$s" -v e="$e" -v b=$((size_mib * 1048576)) 'BEGIN { printf "%-28s %8.1f MB/s  (%.3f s)\n", n, b / (e - s) / 1e6, e - s }'
done
"$bin" bench "$file"

echo "== loopback TCP reference (iperf3, 5 s)"
iperf3 -s -1 -B 127.0.0.1 -p 5299 > /dev/null 2>&1 &
sleep 0.5
iperf3 -c 127.0.0.1 -p 5299 -t 5 -f M | awk '/receiver/ { printf "iperf3 loopback TCP: %s %s\n", $7, $8 }'
wait

echo "== swarm rows, peershare beside libtorrent (python3-libtorrent, mktorrent)"
command -v mktorrent >/dev/null || { sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo; $sudo apt-get install -y -qq mktorrent python3-libtorrent >/dev/null; }
# 1 -> 1 and 4 -> 1 in both orders: the first row runs into memory the host has taken back
# (docs/BENCHMARKS.md, "free page reporting"), and neither tool should always be the one that does.
BENCH_CPU_DETAIL=1 /usr/bin/python3 contrib/bench_swarm.py "$bin" "$file" "$work" "1-1,1-1,4-1,4-1,1-8"

echo "== share start-up (walking and hashing until the link) beside mktorrent"
/usr/bin/python3 contrib/bench_share_startup.py "$bin" "$file" 3

echo "== pipeline stages (zlib, sodium, plugins) beside gzip, openssl and libsodium"
swift build -c release --product peershare-pad >/dev/null
if command -v cc >/dev/null; then
  cc -O2 contrib/sodium_probe.c -o "$work/sodium_probe" -lsodium && "$work/sodium_probe"
fi
mkdir -p "$work/stages"
(cd contrib && /usr/bin/python3 bench_stages.py "../$bin" "$work/stages" "$size_mib")

echo "== instructions per GiB under callgrind (1 -> 1, 16 and 48 MiB), beside libtorrent, b3sum and openssl"
command -v valgrind >/dev/null || { sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo; $sudo apt-get install -y -qq valgrind binutils >/dev/null; }
/usr/bin/python3 contrib/bench_instructions.py "$bin" "$work/instructions"
