#!/usr/bin/env bash
# Reproduces the FP8-vs-BF16 experiment of docs/training.md from ../shared/corpus/tinystories:
# trains the tokenizer, then the bench/train_config.json model (10.7 M parameters, DeepSeek-V3's
# architecture scaled down) in fp8 and bf16 for every seed of SEEDS (same initialization and data
# order per seed), one fp32 run, and the routing-bias ablation (short fp8 runs with and without
# the bias update); measures MTP acceptance of the best fp8 run on the validation stories and
# prints the report.
#
#   scripts/train-default.sh              # everything (about 2.5 h on 2 cores)
#   STEPS=200 SEEDS=0 scripts/train-default.sh   # a quick look
#
# Environment: OUT (default /tmp/dsv3-train-default), STEPS (2000: ~4 M tokens, ~4 epochs),
# SEEDS ("0 1 2"), ABLATION_STEPS (500), JOBS (runs at a time, default 2 with one thread each),
# MTP_STORIES (validation stories for the acceptance, default 100), DSV3_SHARED (../shared).
# A run already finished in OUT is kept; one that stopped part way is resumed from its state
# when it saved one (--save-every), else started again.
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED="${DSV3_SHARED:-../shared}"
CORPUS="$SHARED/corpus/tinystories"
OUT="${OUT:-/tmp/dsv3-train-default}"
STEPS="${STEPS:-2000}"
SEEDS="${SEEDS:-0 1 2}"
ABLATION_STEPS="${ABLATION_STEPS:-500}"
JOBS="${JOBS:-2}"
MTP_STORIES="${MTP_STORIES:-100}"
BUILD_DIR="${BUILD_DIR:-build}"
DSV3="$BUILD_DIR/dsv3"
for f in "$CORPUS/train.txt" "$CORPUS/valid.txt"; do
  [[ -f "$f" ]] || { echo "train-default: $f not found (set DSV3_SHARED)" >&2; exit 1; }
done

scripts/setup.sh
scripts/build.sh
mkdir -p "$OUT/runs"
threads=$(( $(nproc) / JOBS )); (( threads >= 1 )) || threads=1

"$DSV3" train-tokenizer --data "$CORPUS/train.txt" --vocab-size 4096 --special '<|endoftext|>' \
  --no-progress -o "$OUT/tokenizer"

# run NAME PRECISION SEED STEPS [extra train options...]
run() {
  local name=$1 precision=$2 seed=$3 steps=$4; shift 4
  local dir="$OUT/runs/$name" resume=()
  if [[ -f "$dir/done" ]]; then echo "train-default: $name already finished"; return 0; fi
  [[ -f "$dir/train_state.safetensors" ]] && resume=(--resume "$dir")
  "$DSV3" train --config bench/train_config.json --data "$CORPUS/train.txt" \
    --valid "$CORPUS/valid.txt" --tokenizer "$OUT/tokenizer" --precision "$precision" \
    --seed "$seed" --steps "$steps" --batch 8 --seq 256 --eval-every 250 --save-every 250 \
    --log-every 50 -t "$threads" "${resume[@]}" "$@" -o "$dir" 2> "$OUT/runs/$name.log"
  touch "$dir/done"
  echo "train-default: $name finished"
}

# The runs, JOBS at a time; each pair of a seed side by side.
jobs_list=()
for s in $SEEDS; do
  jobs_list+=("fp8-s$s fp8 $s $STEPS" "bf16-s$s bf16 $s $STEPS")
done
first_seed=${SEEDS%% *}
jobs_list+=("fp32-s$first_seed fp32 $first_seed $STEPS")
jobs_list+=("bias-s$first_seed fp8 $first_seed $ABLATION_STEPS")
jobs_list+=("nobias-s$first_seed fp8 $first_seed $ABLATION_STEPS --bias-gamma 0")
for job in "${jobs_list[@]}"; do
  # shellcheck disable=SC2086
  run $job &
  while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
done
wait

# MTP acceptance and the speculative speedup of the best fp8 run (lowest final validation CE):
# the one models/dsv3-tinystories-10m ships.
model=$(/usr/bin/python3 scripts/train_report.py --runs "$OUT/runs" --best-fp8)
echo "train-default: the best fp8 run is $model"
/usr/bin/python3 scripts/mtp_acceptance.py --dsv3 "$DSV3" -m "$model" --valid "$CORPUS/valid.txt" \
  --stories "$MTP_STORIES" -o "$OUT/mtp.json"
"$DSV3" bench -m "$model" -p 128 -n 128 -t 1,2 --json > "$OUT/bench.json"
"$DSV3" perplexity -m "$model" -f "$CORPUS/valid.txt" -c 256 --json --no-progress \
  > "$OUT/perplexity.json"

labels=() logs=()
for job in "${jobs_list[@]}"; do
  name=${job%% *}
  logs+=(--plot "$OUT/runs/$name/train_log.jsonl")
  labels+=(--label "$name")
done
"$DSV3" train "${logs[@]}" "${labels[@]}" -o "$OUT/loss.svg"
/usr/bin/python3 scripts/train_report.py --runs "$OUT/runs" --mtp "$OUT/mtp.json" \
  --bench "$OUT/bench.json" --perplexity "$OUT/perplexity.json" | tee "$OUT/report.md"
echo "train-default: report $OUT/report.md, loss curves $OUT/loss.svg, logs $OUT/runs/*/train_log.jsonl"
