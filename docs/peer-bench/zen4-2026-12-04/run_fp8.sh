cd /work/main
SBS=../shared/tools/peer-bench/side-by-side.sh
LB=/tmp/llama.cpp/build/bin/llama-bench
for T in 2 1; do
  echo "== default, threads $T"; REPS=3 THREADS=$T $SBS build/dsv3 $LB /tmp/pb/v2l6-fp8 /tmp/pb/v2l6-q8_0.gguf
  echo "== --lm-head fp8, threads $T"; REPS=3 THREADS=$T $SBS /tmp/dsv3-fp8head $LB /tmp/pb/v2l6-fp8 /tmp/pb/v2l6-q8_0.gguf
done
