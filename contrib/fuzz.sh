#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer and AddressSanitizer and runs each for SECONDS
# (default 5), starting from the seed corpus in Tests/Fuzz/corpus/TARGET. New inputs go to a
# scratch folder, not into the repository; a crash leaves its input in .build/fuzz-crashes/
# and fails the script.
#   bash contrib/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(krpc ipc peer manifest pipeline link plugin control nat lan)

echo "== building the fuzz targets (libFuzzer + AddressSanitizer)"
swift build --product peershare-fuzz --build-path .build/fuzz \
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -use-ld=lld 2>&1 | grep -v "Cannot export local symbol" || true
binary=".build/fuzz/debug/peershare-fuzz"
[ -x "$binary" ] || { echo "fuzz: build failed" >&2; exit 1; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p .build/fuzz-crashes
status=0
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  if PEERSHARE_FUZZ_TARGET="$target" "$binary" "$scratch/$target" "Tests/Fuzz/corpus/$target" \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
      -artifact_prefix=".build/fuzz-crashes/$target-" >"$log" 2>&1; then
    summary=$(grep -E "^#[0-9]+.*(DONE|pulse|NEW|REDUCE)" "$log" | tail -1 | sed -E 's/ +/ /g')
    runs=$(grep -oE "Done [0-9]+ runs" "$log" | tail -1)
    echo "fuzz $target: ${runs:-?} in ${seconds} s; last: ${summary:-?}"
  else
    echo "fuzz $target: CRASH or error; input in .build/fuzz-crashes/" >&2
    tail -40 "$log" >&2
    status=1
  fi
done
exit $status
