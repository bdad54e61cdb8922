#!/usr/bin/env bash
# Training speed of dsv3 (fp32, bf16, fp8) against PyTorch (fp32, bf16) on the same model and
# batch, measured in the same run, interleaved, each figure the median of REPS runs:
#
#   bench/train_bench.sh [CONFIG.json] [BATCH] [SEQ]        (env: STEPS=5 REPS=3 THREADS="1 2")
#
# CONFIG defaults to the shape of the model dsv3 ships (docs/training.md). PyTorch is a peer
# only: Debian's python3-torch (apt-get install python3-torch libopenblas0-pthread), never a
# dependency of the build or the tests. PyTorch's float32 runs twice per thread count, with its
# own threads and with OpenBLAS's (torch 1.13 on Debian does not hand its thread count to the
# BLAS, and oversubscribing two cores halves its speed), and the faster counts.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-bench/train_config.json}
BATCH=${2:-8}
SEQ=${3:-256}
STEPS=${STEPS:-5}
REPS=${REPS:-3}
THREADS=${THREADS:-"1 2"}
DSV3=${DSV3:-build/dsv3}
[[ -x $DSV3 ]] || { echo "train_bench: $DSV3 is not built (scripts/build.sh)" >&2; exit 1; }
have_torch=1
/usr/bin/python3 -c "import torch" 2>/dev/null || {
  have_torch=0
  echo "train_bench: no PyTorch (apt-get install python3-torch libopenblas0-pthread); dsv3 only" >&2
}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for t in $THREADS; do
  for rep in $(seq "$REPS"); do
    for p in fp32 bf16 fp8; do
      $DSV3 train --bench --config "$CONFIG" --precision $p --batch "$BATCH" --seq "$SEQ" \
        --steps "$STEPS" -t "$t" --json | sed "s/^/dsv3 $t $p /" >>"$out"
      if [[ $have_torch == 1 && $p != fp8 ]]; then
        args=(--config "$CONFIG" --precision $p --batch "$BATCH" --seq "$SEQ" --steps "$STEPS"
              --warmup 2 --json)
        OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t /usr/bin/python3 bench/train_torch.py \
          "${args[@]}" --threads "$t" | tail -1 | sed "s/^/torch $t $p /" >>"$out"
        if [[ $p == fp32 && $t -gt 1 ]]; then
          OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t /usr/bin/python3 bench/train_torch.py \
            "${args[@]}" --threads 1 | tail -1 | sed "s/^/torch-blas $t $p /" >>"$out"
        fi
      fi
    done
  done
done
python3 - "$out" "$CONFIG" "$BATCH" "$SEQ" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    engine, t, p, js = line.split(" ", 3)
    rows.setdefault((engine, int(t), p), []).append(json.loads(js))
def median(engine, t, p):
    runs = rows.get((engine, t, p), [])
    if not runs:
        return None
    tok = statistics.median(r["tokens_per_s"] for r in runs)
    return tok, statistics.median(r["gflops"] for r in runs), runs[0]
def best(engine, t, p):
    # PyTorch: the faster of its two thread setups (own threads, or the BLAS's).
    found = [m for m in (median(engine, t, p), median("torch-blas", t, p) if engine == "torch" else None) if m]
    return max(found, key=lambda m: m[0]) if found else None
print(f"config {sys.argv[2]}, batch {sys.argv[3]} x {sys.argv[4]} tokens; tokens/s (GFLOP/s), median of runs")
print()
print("| threads | precision | dsv3 | PyTorch | dsv3 / PyTorch | dsv3 per step: forward / backward / optimizer / quantization (ms) |")
print("|---|---|---|---|---|---|")
for t in sorted({k[1] for k in rows}):
    for p in ("fp32", "bf16", "fp8"):
        d = best("dsv3", t, p)
        if d is None:
            continue
        torch_p = p if p != "fp8" else "bf16"
        tr = best("torch", t, torch_p)
        ph = d[2]["phase_s"]
        phases = " / ".join(f"{1e3 * ph[k]:.0f}" for k in ("forward", "backward", "optimizer", "quantization"))
        ts = f"{tr[0]:.0f} ({tr[1]:.1f}){' bf16' if p == 'fp8' else ''}" if tr else "-"
        ratio = f"{d[0] / tr[0]:.2f}" if tr else "-"
        print(f"| {t} | {p} | {d[0]:.0f} ({d[1]:.1f}) | {ts} | {ratio} | {phases} |")
PY
