cd /work/main
SBS=../shared/tools/peer-bench/side-by-side.sh
LB=/tmp/llama.cpp/build/bin/llama-bench
printf '#!/bin/sh\nexec /work/main/build/dsv3 "$@" --simd AVX2\n' > /tmp/dsv3-avx2; chmod +x /tmp/dsv3-avx2
printf '#!/bin/sh\nexec /work/main/build/dsv3 "$@" --simd AVX2 --lm-head fp8\n' > /tmp/dsv3-avx2-fp8head; chmod +x /tmp/dsv3-avx2-fp8head
for T in 2 1; do
  echo "== dsv3 --simd AVX2, threads $T"; REPS=2 THREADS=$T $SBS /tmp/dsv3-avx2 $LB /tmp/pb/v2l6-fp8 /tmp/pb/v2l6-q8_0.gguf
  echo "== dsv3 --simd AVX2 --lm-head fp8, threads $T"; REPS=2 THREADS=$T $SBS /tmp/dsv3-avx2-fp8head $LB /tmp/pb/v2l6-fp8 /tmp/pb/v2l6-q8_0.gguf
done
