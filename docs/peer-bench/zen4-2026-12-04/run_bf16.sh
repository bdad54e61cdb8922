cd /work/main
SBS=../shared/tools/peer-bench/side-by-side.sh
LB=/tmp/llama.cpp/build/bin/llama-bench
for T in 2 1; do
  echo "== BF16 pair, default, threads $T"; REPS=3 THREADS=$T $SBS build/dsv3 $LB /tmp/pb/v2l6-bf16 /tmp/pb/v2l6-bf16.gguf
done
