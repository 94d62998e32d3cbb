#!/usr/bin/env bash
# allcnn against PyTorch on this CPU, interleaved in one run, for the
# table in docs/performance.md.
#
#   bench/side_by_side.sh [ALLCNN_BINARY] [ROUNDS] > results.jsonl
#
# CONVS (default "winograd winograd-bf16") lists the allcnn backends to run,
# TORCH (default "f32 f32-cl bf16-cl") the PyTorch configurations (f32,
# f32 + channels_last, bf16 autocast + channels_last), BATCHES (default
# "64 128") the batch sizes: e.g. CONVS="winograd winograd-f4"
# TORCH="f32 f32-cl" on an AVX2-only CPU, where bf16 is slow in both tools.
#
# For each round, mode (train, infer) and batch (64, 128) it runs, back to
# back: allcnn f32 (Winograd), allcnn winograd-bf16, PyTorch f32, PyTorch
# f32 + channels_last and PyTorch bf16 autocast + channels_last (its fastest
# path on CPUs with AVX512-BF16 or AMX; on AVX2-only CPUs f32 is). Every run prints one
# JSON line with the round added; take the median over rounds. The CPU's
# model and its bf16/AMX flags are printed first (as a JSON line with
# "cpu"). Needs torch; runs on the machine's cores (set THREADS to pin).
# Both tools run WARMUP (default 3) untimed iterations before ITERS timed
# ones and report the mean and the median time per batch.
set -euo pipefail
BIN=${1:-target/release/allcnn}
ROUNDS=${2:-3}
ITERS=${ITERS:-3}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-$(nproc)}
HERE=$(cd "$(dirname "$0")" && pwd)
SPEC=$(mktemp)
trap 'rm -f "$SPEC"' EXIT
"$BIN" models --json > "$SPEC"

model=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -m1 "^flags" /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512f|avx512_bf16|amx_bf16|amx_tile|avx2)$' | tr '\n' ' ' | sed 's/ $//')
printf '{"cpu":"%s","flags":"%s","threads":%s}\n' "$model" "$flags" "$THREADS"

CONVS=${CONVS:-winograd winograd-bf16}
TORCH=${TORCH:-f32 f32-cl bf16-cl}
BATCHES=${BATCHES:-64 128}
for round in $(seq 1 "$ROUNDS"); do
  for mode in train infer; do
    for batch in $BATCHES; do
      for conv in $CONVS; do
        RAYON_NUM_THREADS=$THREADS "$BIN" bench --model all-cnn-c --mode "$mode" --batch "$batch" \
          --iters "$ITERS" --warmup "$WARMUP" --conv "$conv" | sed "s/^{/{\"round\":$round,/"
      done
      for config in $TORCH; do
        case $config in
          f32) extra="" ;;
          f32-cl) extra="--channels-last" ;;
          bf16-cl) extra="--bf16 --channels-last" ;;
          *) echo "unknown PyTorch configuration $config (f32, f32-cl, bf16-cl)" >&2; exit 2 ;;
        esac
        # shellcheck disable=SC2086
        python3 "$HERE/pytorch_reference.py" --spec "$SPEC" --model all-cnn-c --mode "$mode" \
          --batch "$batch" --iters "$ITERS" --warmup "$WARMUP" --threads "$THREADS" $extra 2>/dev/null \
          | sed "s/^{/{\"round\":$round,/"
      done
    done
  done
done
