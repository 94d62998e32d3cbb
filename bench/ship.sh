#!/usr/bin/env bash
# Ship a finished All-CNN-C CIFAR-10 run as the embedded pretrained model
# (allcnn-models/pretrained/all-cnn-c-cifar10), in three steps that stop at
# the first failure:
#
#   bench/ship.sh check RUN     # evaluate, export, prove the compact file
#                               # (writes only under $WORK)
#   bench/ship.sh install RUN   # into the crate; rebuild; the shipped-weights
#                               # tests and the crate's size
#   bench/ship.sh figures       # docs/img from the rebuilt binary's model
#
# then the docs by hand (the list in docs/runs/augmented256-seed62/README.md,
# "Shipping it"). Run from anywhere; paths are the repository's.
#
# Settings (environment):
#   ALLCNN   release binary for `check` (default target/release/allcnn;
#            `install` rebuilds it with the new weights embedded)
#   D        the CIFAR-10 image folder (default ../shared/data/cifar10-jpg)
#   PROV     provenance, KEY=VALUE lines: commit (the training builds),
#            hardware, protocol, sessions (default RUN/provenance.txt, else
#            docs/runs/augmented256-seed62/provenance.txt)
#   WORK     where `check` writes (default target/ship)
#   WEIGHTS  final (the default: the last epoch, the figure to report);
#            best only in a rehearsal
#   REHEARSE=1  a rehearsal: ships nothing (`install` refuses), does not
#            require beating the shipped model, leaves out the numpy rebuild
#            (10 min on 2 cores)
#   CARGO_TARGET_DIR  as cargo's (default target/)
set -euo pipefail
MODE=${1:-}
RUN=${2:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
ALLCNN=${ALLCNN:-$TARGET/release/allcnn}
D=${D:-$ROOT/../shared/data/cifar10-jpg}
WORK=${WORK:-$TARGET/ship}
# Absolute, as `figures` works in another folder.
[ -d "$D" ] && D=$(cd "$D" && pwd)
[ -z "$RUN" ] || [ ! -d "$RUN" ] || RUN=$(cd "$RUN" && pwd)
WEIGHTS=${WEIGHTS:-final}
REHEARSE=${REHEARSE:-}
P=$ROOT/allcnn-models/pretrained/all-cnn-c-cifar10

die() { echo "ship: $*" >&2; exit 1; }
# A JSON file's field: json FILE KEY
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
# A safetensors file's metadata value: meta FILE KEY
meta() {
  python3 - "$1" "$2" <<'PY'
import json, sys
with open(sys.argv[1], "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    print(json.loads(f.read(n))["__metadata__"][sys.argv[2]])
PY
}
pct() { python3 -c "import sys; print(f'{100*float(sys.argv[1]):.2f}%')" "$1"; }
# Whether the condition on the floats a and b holds: holds A 'a > b' B
holds() { python3 -c "import sys; a, b = map(float, sys.argv[1:3]); sys.exit(not eval(sys.argv[3]))" "$1" "$3" "$2"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

need_run() {
  [ -n "$RUN" ] || die "give the run directory: bench/ship.sh $MODE RUN"
  [ -f "$RUN/metrics.jsonl" ] || die "$RUN is not a run directory (no metrics.jsonl)"
  case $WEIGHTS in
    final) ;;
    best) [ -n "$REHEARSE" ] || die "WEIGHTS=best only with REHEARSE=1: ship the last epoch, not the one the test subset chose" ;;
    *) die "WEIGHTS=$WEIGHTS: final (or best, for a rehearsal)" ;;
  esac
  [ -f "$RUN/$WEIGHTS.safetensors" ] ||
    die "$RUN/$WEIGHTS.safetensors is missing (an unfinished run has no final weights: resume it to the end first)"
}

check() {
  need_run
  [ -x "$ALLCNN" ] || die "no binary at $ALLCNN: cargo build --release -p allcnn-cli (or set ALLCNN)"
  [ -d "$D/test" ] || die "no CIFAR-10 image folder at $D (set D)"
  local prov=${PROV:-}
  if [ -z "$prov" ]; then
    prov=$RUN/provenance.txt
    [ -f "$prov" ] || prov=$ROOT/docs/runs/augmented256-seed62/provenance.txt
  fi
  [ -f "$prov" ] || die "no provenance file $prov (KEY=VALUE lines: commit, hardware, protocol, sessions)"
  for key in commit hardware protocol sessions; do
    grep -q "^$key=" "$prov" || die "$prov has no $key= line"
  done
  if grep -n "^[^#].*TODO" "$prov" >&2; then
    [ -n "$REHEARSE" ] || die "$prov still has TODO (the lines above): write them first"
  fi
  local w=$RUN/$WEIGHTS.safetensors epoch
  epoch=$(meta "$w" allcnn.train.epoch)
  rm -rf "$WORK" && mkdir -p "$WORK"
  echo "== 1. $WEIGHTS weights (epoch $epoch), f32, the run's full whitening, all test images"
  "$ALLCNN" eval --weights "$w" --data "$D" --json > "$WORK/eval-full-f32.json"
  local full shipped top5
  full=$(json "$WORK/eval-full-f32.json" top1)
  top5=$(json "$WORK/eval-full-f32.json" top5)
  shipped=$(json "$P/eval.json" top1)
  echo "   $(pct "$full") top-1 / $(pct "$top5") top-5; shipped now: $(pct "$shipped")"
  if ! holds "$full" 'a > b' "$shipped"; then
    [ -n "$REHEARSE" ] || die "epoch $epoch ($(pct "$full")) does not beat the shipped model ($(pct "$shipped")): record it, ship nothing"
    echo "   (rehearsal: it does not beat the shipped model; going on)"
  fi

  echo "== 2. export: rank-1024 f16 whitening, f16 parameters, evaluated as exported"
  local args=() line key
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in ''|'#'*) continue ;; esac
    key=${line%%=*}
    case $key in
      commit) args+=(--provenance "$line (training; exported with $(git -C "$ROOT" describe --always --dirty))") ;;
      sessions) ;;
      *) args+=(--provenance "$line") ;;
    esac
  done < "$prov"
  local sessions wall
  sessions=$(sed -n 's/^sessions=//p' "$prov")
  wall=$(python3 - "$RUN/metrics.jsonl" "$epoch" <<'PY'
import json, sys
last = int(sys.argv[2])  # epochs done; the records count from 0
# The last record of each epoch (a resume from an older checkpoint records
# an epoch again), up to the shipped one.
rows = {}
for l in open(sys.argv[1]):
    if '"type":"epoch"' in l:
        r = json.loads(l)
        rows[r["epoch"]] = r["seconds"]
s = sorted(v for e, v in rows.items() if e < last)
h, m = divmod(round(sum(s) / 60), 60)
print(f"epochs 1-{last}: {h} h {m} min of epoch time (the sum of metrics.jsonl's per-epoch seconds); median {s[len(s) // 2]:.0f} s per epoch")
PY
)
  args+=(--provenance "wall_time=$wall; $sessions")
  args+=(--provenance "whitening=rank 1024 low-rank f16 and f16 parameters; with the full 3072x3072 matrix and f32 parameters the same weights score $(pct "$full") top-1 / $(pct "$top5") top-5")
  "$ALLCNN" export-hub "$RUN" --out "$WORK/export" --weights "$WEIGHTS" --whitening-rank 1024 \
    --f16-weights --eval-data "$D" "${args[@]}" --json > "$WORK/export.json"
  local compact
  compact=$(json "$WORK/export/eval.json" top1)
  ls -l "$WORK/export/model.safetensors"

  echo "== 3. compact file against full whitening: under 0.1 point"
  echo "   compact $(pct "$compact"), full $(pct "$full")"
  holds "$compact" 'abs(a - b) < 0.001' "$full" ||
    die "the compact file moves top-1 by 0.1 point or more: ship the full file, or a larger --whitening-rank"
  if ! holds "$compact" 'a > b' "$shipped"; then
    [ -n "$REHEARSE" ] || die "the compact file ($(pct "$compact")) does not beat the shipped one ($(pct "$shipped")): ship nothing"
  fi

  if [ -n "$REHEARSE" ]; then
    echo "== 4. numpy rebuild: left out (REHEARSE=1)"
  else
    echo "== 4. numpy rebuild from the file's own metadata (about 10 min on 2 cores)"
    python3 "$ROOT/bench/pretrained_check.py" "$WORK/export/model.safetensors" "$D/test" | tee "$WORK/numpy.json"
    local numpy
    numpy=$(json "$WORK/numpy.json" top1)
    echo "   numpy $(pct "$numpy"), allcnn $(pct "$compact") (a few JPEG-decoder flips are expected: 1-11 images so far)"
    holds "$numpy" 'abs(a - b) < 0.003' "$compact" ||
      die "the numpy rebuild is 0.3 point or more off allcnn's figure: the format or its documentation has drifted"
  fi
  # The figures the docs quote (step 5), in one place.
  python3 - "$WORK" "$epoch" <<'PY' | tee "$WORK/summary.txt"
import json, os, sys
work, epoch = sys.argv[1], sys.argv[2]
full = json.load(open(os.path.join(work, "eval-full-f32.json")))
comp = json.load(open(os.path.join(work, "export", "eval.json")))
classes = sorted(full["per_class"], key=lambda c: c["accuracy"])
print(f"epoch {epoch}: full whitening, f32 {100*full['top1']:.2f}% / {100*full['top5']:.2f}% (loss {full['loss']:.3f}); "
      f"compact {100*comp['top1']:.2f}% / {100*comp['top5']:.2f}%")
print("per class (full): " + ", ".join(f"{c['name']} {100*c['accuracy']:.1f}%" for c in classes))
numpy = os.path.join(work, "numpy.json")
if os.path.exists(numpy):
    n = json.load(open(numpy))
    print(f"numpy rebuild: {100*n['top1']:.2f}% ({round(abs(n['top1'] - comp['top1']) * n['images'])} images off)")
PY
  # What was checked, for install: the run, the weights and their digest.
  printf '%s\n%s\n%s\n' "$RUN" "$WEIGHTS" "$(sha "$w")" > "$WORK/run"
  echo "checked: $WORK/export is ready; next: bench/ship.sh install $RUN"
}

install() {
  need_run
  [ -z "$REHEARSE" ] || die "REHEARSE=1: nothing is installed from a rehearsal"
  local checked
  checked=$(printf '%s\n%s\n%s' "$RUN" "$WEIGHTS" "$(sha "$RUN/$WEIGHTS.safetensors")")
  [ -f "$WORK/export/eval.json" ] && [ "$(cat "$WORK/run" 2>/dev/null)" = "$checked" ] ||
    die "no checked export of $RUN/$WEIGHTS.safetensors as it is now in $WORK: bench/ship.sh check $RUN first"
  [ -f "$WORK/numpy.json" ] || die "$WORK has no numpy rebuild: run check without REHEARSE"
  for f in metrics.jsonl learning-curve.svg config.toml; do
    [ -f "$RUN/$f" ] || die "$RUN/$f is missing"
  done
  holds "$(meta "$WORK/export/model.safetensors" allcnn.eval.top1)" 'a == b' "$(json "$WORK/export/eval.json" top1)" ||
    die "$WORK/export/model.safetensors records another top-1 (allcnn.eval.top1) than its eval.json"
  [ -z "$(git -C "$ROOT" status --porcelain -- "$P")" ] ||
    die "$P has uncommitted changes: commit or restore them first (git checkout -- $P)"
  # From here on a failure puts the shipped files back as committed.
  trap 'rc=$?; if [ "$rc" -ne 0 ]; then echo "ship: install failed; restoring $P as committed" >&2; git -C "$ROOT" checkout -- "$P"; git -C "$ROOT" clean -fq -- "$P"; fi' EXIT

  echo "== 5. into the crate ($P)"
  cp "$WORK"/export/{model.safetensors,config.json,README.md,eval.json} "$P/"
  cp "$RUN/metrics.jsonl" "$RUN/learning-curve.svg" "$P/"
  # The recipe with the data path as the repository's docs give it.
  python3 - "$RUN/config.toml" "$P/train-config.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
open(sys.argv[2], "w").write(re.sub(r'(?m)^path = ".*"$', 'path = "../shared/data/cifar10-jpg"', text, count=1))
PY
  git -C "$ROOT" status --short -- "$P"

  echo "== 6. the binary with the new weights embedded"
  (cd "$ROOT" && cargo build --release -p allcnn-cli)
  local bin=$TARGET/release/allcnn
  "$bin" pretrained list
  "$bin" eval --data "$D" --json > "$WORK/eval-embedded.json"
  local want got
  want=$(json "$WORK/export/eval.json" top1)
  got=$(json "$WORK/eval-embedded.json" top1)
  holds "$got" 'a == b' "$want" || die "the embedded model scores $got, the export $want"
  echo "   embedded: $(pct "$got") (= the export)"
  "$bin" eval --data "$D" --precision bf16 --json > "$WORK/eval-embedded-bf16.json"
  echo "   embedded, --precision bf16: $(pct "$(json "$WORK/eval-embedded-bf16.json" top1)")"
  "$bin" predict "$ROOT/docs/samples" --top-k 2

  echo "== 7. the shipped-weights tests and the crate's size"
  (cd "$ROOT" &&
    cargo test --release -p allcnn-models --test pretrained &&
    cargo test --release -p allcnn-cli --test cli shipped_weights &&
    cargo test --release -p allcnn-train --test real_data shipped &&
    cargo test --release -p allcnn-train --test classify shipped &&
    rm -f "$TARGET"/package/allcnn-models-*.crate &&
    cargo package --workspace --exclude allcnn-testing --no-verify --allow-dirty --quiet)
  local crate size
  crate=$(ls "$TARGET"/package/allcnn-models-*.crate)
  size=$(stat -c %s "$crate")
  [ "$size" -lt $((10 * 1024 * 1024)) ] || die "$crate is $size bytes: over crates.io's 10 MiB"
  trap - EXIT
  echo "installed (not committed); $crate is $size bytes. Next: bench/ship.sh figures"
}

figures() {
  local bin=$TARGET/release/allcnn
  [ -x "$bin" ] || die "no binary at $bin: bench/ship.sh install first"
  [ -d "$D/test" ] || die "no CIFAR-10 image folder at $D (set D)"
  local dir=$WORK/figures
  rm -rf "$dir" && mkdir -p "$dir"
  cd "$dir"
  # The commands as docs/visualization.md gives them, run from a folder
  # where docs/ is the repository's, so their output reads as quoted there.
  ln -s "$ROOT/docs" docs
  echo "== 8. docs/visualization.md's figures (console output in $dir/*.log)"
  "$bin" viz --method guided-backprop --input docs/samples --out maps 2>&1 | tee maps.log
  "$bin" viz --method grad-cam --input docs/samples --out methods \
    --compare gradient,guided-backprop,input-x-gradient,grad-cam,guided-grad-cam,integrated-gradients,occlusion,deep-lift,lrp,feature-ablation,kernel-shap \
    2>&1 | tee methods.log
  # The shuffled-label network of the trust report, whitened as the shipped
  # model (its config reads shipped.safetensors from this folder).
  "$bin" pretrained save --out shipped.safetensors
  "$bin" train --config docs/runs/shuffled-labels/train-config.toml --data "$D" --out shuffled \
    > shuffled.log 2>&1 || { tail -5 shuffled.log; die "the shuffled-label training failed (shuffled.log)"; }
  tail -2 shuffled.log
  "$bin" viz sanity --input docs/samples --out trust --shuffled-labels shuffled/final.safetensors \
    2>&1 | tee trust.log
  "$bin" viz top --data "$D" --split test --limit 2000 --layer conv6 --channels 0..8 -k 8 \
    --out top-conv6.png --scale 3 2>&1 | tee top.log
  "$bin" viz top --data "$D" --split test --limit 2000 --layer conv9 --channels 0..10 -k 8 \
    --out top-conv9.png --scale 2 2>&1 | tee -a top.log
  cp maps/comparison.png "$ROOT/docs/img/comparison.png"
  cp methods/comparison.png "$ROOT/docs/img/methods.png"
  cp trust/sanity-cascade.png trust/faithfulness.svg top-conv6.png top-conv9.png "$ROOT/docs/img/"
  cp shuffled/metrics.jsonl shuffled/learning-curve.svg "$ROOT/docs/runs/shuffled-labels/"
  git -C "$ROOT" status --short -- docs/img docs/runs/shuffled-labels
  echo "figures written; the text of docs/visualization.md quotes $dir/*.log"
}

case $MODE in
  check) check ;;
  install) install ;;
  figures) figures ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
esac
