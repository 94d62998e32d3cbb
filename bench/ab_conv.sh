#!/usr/bin/env bash
# Two CPU convolution backends of one allcnn binary, A B B A ... in one run,
# for a ratio that survives a noisy shared machine:
#
#   bench/ab_conv.sh [ALLCNN_BINARY] [ROUNDS] [MODE] [BATCH] [CONV_A] [CONV_B] > results.jsonl
#
# defaults: target/release/allcnn 8 train 128 winograd winograd-f4. Each
# `allcnn bench` line is printed with "round" and "which" (A or B) added;
# the medians and the median of the per-round ratios B/A go to stderr.
# PAUSE_PID=PID stops that process (e.g. a training run) with SIGSTOP while
# measuring and continues it afterwards, even on Ctrl-C. ITERS (default 3)
# and WARMUP (default 2) are passed to `allcnn bench`; THREADS (default:
# all cores) sets RAYON_NUM_THREADS.
set -euo pipefail
BIN=${1:-target/release/allcnn}
ROUNDS=${2:-8}
MODE=${3:-train}
BATCH=${4:-128}
A=${5:-winograd}
B=${6:-winograd-f4}
ITERS=${ITERS:-3}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-$(nproc)}
if [ -n "${PAUSE_PID:-}" ]; then
  kill -STOP "$PAUSE_PID"
  trap 'kill -CONT "$PAUSE_PID"' EXIT
fi
OUT=$(mktemp)
trap 'rm -f "$OUT"; [ -n "${PAUSE_PID:-}" ] && kill -CONT "$PAUSE_PID"; true' EXIT
one() { # which conv round
  RAYON_NUM_THREADS=$THREADS "$BIN" bench --model all-cnn-c --mode "$MODE" --batch "$BATCH" \
    --iters "$ITERS" --warmup "$WARMUP" --conv "$2" | sed "s/^{/{\"round\":$3,\"which\":\"$1\",/" | tee -a "$OUT"
}
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then one A "$A" "$r"; one B "$B" "$r"; else one B "$B" "$r"; one A "$A" "$r"; fi
done
python3 - "$OUT" "$A" "$B" >&2 <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ips = {w: {r["round"]: r["images_per_sec"] for r in rows if r["which"] == w} for w in "AB"}
rounds = sorted(set(ips["A"]) & set(ips["B"]))
for w, name in (("A", sys.argv[2]), ("B", sys.argv[3])):
    v = [ips[w][r] for r in rounds]
    print(f"{w} {name}: median {st.median(v):.1f} img/s, range {min(v):.1f}-{max(v):.1f}")
print(f"median ratio B/A over {len(rounds)} rounds: {st.median(ips['B'][r] / ips['A'][r] for r in rounds):.3f}")
PY
