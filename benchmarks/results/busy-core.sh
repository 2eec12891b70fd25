#!/usr/bin/env bash
# Two trees' kernel times at 2 threads while another process keeps the second core busy
# (benchmarks/RESULTS.md, "Blocks taken in turn"): from benchmarks/,
#     bash results/busy-core.sh ROUNDS TREE_A TREE_B CASE ...
set -euo pipefail
rounds=$1 tree_a=$2 tree_b=$3
shift 3
taskset -c 1 python3 -c "while True: pass" &
busy=$!
trap 'kill $busy' EXIT
sleep 1
T=2 P=2 python ab_kernel_time.py "$rounds" "$tree_a" "$tree_b" "$@"
