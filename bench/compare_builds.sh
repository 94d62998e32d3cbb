#!/usr/bin/env bash
# Two allcnn binaries against each other on this CPU, in ABBA order (A B,
# B A, A B, ...) so that drift over the run (other tenants, heat) falls on
# both alike. One JSON line per run, with the round and the binary added.
#
#   bench/compare_builds.sh OLD_BINARY NEW_BINARY [ROUNDS] [-- bench args]
#   bench/compare_builds.sh old/allcnn target/release/allcnn 4 -- \
#     --model all-cnn-c --mode infer --batch 64 --iters 16 --conv winograd-bf16
#
# Bench arguments after `--` replace the default `--model all-cnn-c --mode
# train --batch 128 --iters 8 --conv winograd-bf16` (give all you need:
# `--iters 8 or more`, see docs/performance.md). PAUSE_PID=PID stops that process
# (a training run, say) with SIGSTOP for the measurement and resumes it
# on exit, however the script ends. THREADS sets RAYON_NUM_THREADS.
set -euo pipefail
A=${1:?old binary}; B=${2:?new binary}; ROUNDS=${3:-4}
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then
  set -- --model all-cnn-c --mode train --batch 128 --iters 8 --conv winograd-bf16
fi
THREADS=${THREADS:-$(nproc)}
if [ -n "${PAUSE_PID:-}" ]; then
  trap 'kill -CONT "$PAUSE_PID"' EXIT
  kill -STOP "$PAUSE_PID"
  sleep 1
fi
for r in $(seq 1 "$ROUNDS"); do
  if (( r % 2 )); then order=("$A" "$B"); else order=("$B" "$A"); fi
  for bin in "${order[@]}"; do
    RAYON_NUM_THREADS=$THREADS "$bin" bench "$@" | sed "s|^{|{\"round\":$r,\"binary\":\"$bin\",|"
  done
done
