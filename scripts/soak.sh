#!/usr/bin/env bash
# Run the fault tests N times in a row (default 10), each in a fresh pytest session; prints a
# line per run and a summary. A fault test that passes once proves little.
#   scripts/soak.sh [N] [pytest node ids...]
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
shift || true
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(tests/integration/test_monitor.py::test_chaos_ingest_loses_nothing_and_indexes_each_item_once)
fi
mkdir -p .cache
passed=0
for i in $(seq 1 "$n"); do
  start=$(date +%s)
  if .venv/bin/python -m pytest -q -p no:cacheprovider "${tests[@]}" > ".cache/soak-$i.log" 2>&1; then
    passed=$((passed + 1)); verdict=pass
  else
    verdict="FAIL (see .cache/soak-$i.log)"
  fi
  echo "run $i/$n: $verdict in $(( $(date +%s) - start )) s"
done
echo "soak: $passed of $n passed"
[ "$passed" -eq "$n" ]
