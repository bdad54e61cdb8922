#!/usr/bin/env bash
# Quick start, part one: install dependencies, build, write a tiny random DeepSeek-V3-style
# checkpoint (FP8, Hugging Face layout) and generate from it, printing tokens/s and the latent
# KV-cache bytes per token.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
model="$BUILD_DIR/demo-tiny"
"$BUILD_DIR/dsv3" synth --preset tiny --dtype fp8 --seed 1 -o "$model"
"$BUILD_DIR/dsv3" info -m "$model"
echo "generate: 64 tokens after the prompt 1,2,3,4,5,6,7,8 (greedy)"
"$BUILD_DIR/dsv3" generate -m "$model" --ids 1,2,3,4,5,6,7,8 -n 64 --ignore-eos
