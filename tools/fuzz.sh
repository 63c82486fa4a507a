#!/usr/bin/env bash
# Runs the parser property tests (pixel-run/tests/fuzz_parsers.rs) long: rounds of
# PROPTEST_CASES cases, each round with fresh random seeds, until the time is up.
#   tools/fuzz.sh --minutes 10 [--cases 20000]
set -euo pipefail
minutes=5
cases=20000
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --cases) cases="$2"; shift 2 ;;
    *) echo "usage: tools/fuzz.sh [--minutes N] [--cases N]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
cargo test --release -p pixel-run --test fuzz_parsers --no-run
end=$(( $(date +%s) + minutes * 60 ))
round=0
while [ "$(date +%s)" -lt "$end" ]; do
  round=$((round + 1))
  echo "round $round: $cases cases per parser"
  PROPTEST_CASES="$cases" cargo test --release -q -p pixel-run --test fuzz_parsers
done
echo "no parser panicked in $round rounds"
