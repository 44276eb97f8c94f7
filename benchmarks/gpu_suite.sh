#!/usr/bin/env bash
# The GPU check, for when a CUDA device is lent: every `gpu`-marked test, then the GPU benchmarks.
#
#   bash benchmarks/gpu_suite.sh          (from any directory; under 8 minutes on one GPU)
#
# Writes benchmarks/results/gpu_suite.json (each test's outcome, from pytest's junit XML) and
# benchmarks/results/gpu_bench.json (benchmarks/gpu_bench.py). Exits with pytest's status when a test
# failed or timed out, else with the benchmark's. Without a CUDA device it prints one line, writes
# nothing and exits 0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

cuda=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")
if [[ "$cuda" != 1 ]]; then
  echo "no CUDA device: GPU suite skipped"
  exit 0
fi

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
tests_status=0
timeout 220 python3 -m pytest -m gpu -q -p no:cacheprovider --junitxml="$workdir/gpu_tests.xml" tests \
  || tests_status=$?
if [[ -f "$workdir/gpu_tests.xml" ]]; then
  python3 benchmarks/gpu_bench.py --junit "$workdir/gpu_tests.xml" --pytest-status "$tests_status"
else
  echo "pytest wrote no junit XML (exit status $tests_status)" >&2
fi
bench_status=0
timeout 230 python3 benchmarks/gpu_bench.py || bench_status=$?
echo "gpu tests: exit status $tests_status; gpu benchmarks: exit status $bench_status"
if [[ "$tests_status" != 0 ]]; then
  exit "$tests_status"
fi
exit "$bench_status"
