#!/usr/bin/env bash
# Encode throughput of our tokenizer against Hugging Face's `tokenizers` (npm package, the Rust
# library through its native Node binding), side by side on the same text of 2 MB, one core each.
# Checks that both give the same ids, then prints MB/s for both and the ratio.
#
# Usage: bench/tokenizer_bench.sh [TOKENIZER_DIR] [RUNS]
#   TOKENIZER_DIR  a folder with tokenizer.json + tokenizer_config.json
#                  (default ../shared/testdata/tokenizer/deepseek_v3)
#   RUNS           encodes per library; best and median are reported (default 5)
# Needs node and npm (only for this script). The npm packages go to $BUILD_DIR/bench-node,
# which git ignores; nothing is installed system-wide.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
TOK="${1:-../shared/testdata/tokenizer/deepseek_v3}"
RUNS="${2:-5}"
NODE_DIR="$BUILD_DIR/bench-node"

[[ -x "$BUILD_DIR/dsv3" ]] || scripts/build.sh
mkdir -p "$NODE_DIR"
if [[ ! -d "$NODE_DIR/node_modules/tokenizers" ]]; then
  echo "bench: installing npm tokenizers@0.23.2 into $NODE_DIR" >&2
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent tokenizers@0.23.2 \
     @huggingface/tokenizers@0.2.0 >&2)
fi
cp bench/tokenizer_bench.js "$NODE_DIR/"

corpus="$BUILD_DIR/bench-corpus.txt"
node "$NODE_DIR/tokenizer_bench.js" corpus "$TOK" "$corpus"
echo "bench: text $corpus: $(wc -c <"$corpus") bytes, sha256 $(sha256sum "$corpus" | cut -c1-16)" >&2

# One core for both; no thread pools.
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c 0); fi
export RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1

hf=$("${pin[@]}" node "$NODE_DIR/tokenizer_bench.js" hf "$TOK" "$corpus" "$RUNS" "$BUILD_DIR/bench-ids-hf.txt")
ours=$("${pin[@]}" "$BUILD_DIR/dsv3" tokenize --tokenizer "$TOK" --file "$corpus" --bench "$RUNS")
"$BUILD_DIR/dsv3" tokenize --tokenizer "$TOK" --file "$corpus" >"$BUILD_DIR/bench-ids-dsv3.txt"
if cmp -s "$BUILD_DIR/bench-ids-hf.txt" "$BUILD_DIR/bench-ids-dsv3.txt"; then
  same="identical ids"
else
  same="IDS DIFFER (see $BUILD_DIR/bench-ids-*.txt)"
fi

field() { sed -E "s/.*\"$2\":([0-9.e+-]+).*/\1/" <<<"$1"; }
library=$(sed -E 's/.*"library":"([^"]*)".*/\1/' <<<"$hf")
hf_best=$(field "$hf" mb_per_s_best); hf_med=$(field "$hf" mb_per_s_median)
our_best=$(field "$ours" mb_per_s_best); our_med=$(field "$ours" mb_per_s_median)
echo "text:  $(field "$ours" bytes) bytes, $(field "$ours" tokens) tokens ($same)"
printf 'HF:    %-60s %8.2f MB/s (best) %8.2f MB/s (median)\n' "$library" "$hf_best" "$hf_med"
printf 'dsv3:  %-60s %8.2f MB/s (best) %8.2f MB/s (median)\n' "dsv3 tokenize" "$our_best" "$our_med"
awk -v a="$our_med" -v b="$hf_med" 'BEGIN { printf "ratio: dsv3 / HF = %.1fx (median)\n", a / b }'
[[ "$same" == "identical ids" ]]
