#!/usr/bin/env bash
# Quick start, part one: install dependencies, build, and write a short story with the model that
# ships in models/dsv3-tinystories-10m (DeepSeek-V3's architecture at 10.7 M parameters, trained
# by dsv3 with the FP8 recipe on TinyStories; its card is models/dsv3-tinystories-10m/README.md).
# Prints the model summary, the story as it is generated, prefill and decode tokens/s, the latent
# KV-cache bytes per token and the MTP draft acceptance of speculative decoding.
#
#   scripts/demo.sh                              # "Once upon a time", greedy
#   PROMPT="The little dog" TEMP=0.8 scripts/demo.sh
#
# Environment: PROMPT (the story's first words), N (tokens, default 200), TEMP (0 = greedy),
# SEED, BUILD_DIR (build).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
model=models/dsv3-tinystories-10m
prompt="${PROMPT:-Once upon a time}"
"$BUILD_DIR/dsv3" info -m "$model"
echo
echo "generate: a story after \"$prompt\" (${N:-200} tokens at most, temperature ${TEMP:-0})"
echo
# The model was trained on stories each following an <|endoftext|> line: the prompt starts one.
# generate prints what follows the prompt, so the prompt is printed first; its statistics (on
# stderr) follow the story.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
printf '%s' "$prompt"
"$BUILD_DIR/dsv3" generate -m "$model" --raw -p $'<|endoftext|>\n'"$prompt" -n "${N:-200}" \
  --temp "${TEMP:-0}" --seed "${SEED:-0}" 2> "$log" || { cat "$log" >&2; exit 1; }
echo
cat "$log"
