// Dense matrix products of the trainer: float32 GEMM with either operand transposed (the forward,
// data-gradient and weight-gradient products of a linear layer), threaded over the output and
// dispatched to the best compiled SIMD target. Plain reference in tests/kernels_reference.h.
#pragma once

#include <cstdint>

namespace dsv3::kernels {

enum class Trans { kN, kT };

// C[M, N] = beta * C + op(A) op(B), beta 0 (C is overwritten, may hold NaN) or 1 (accumulate);
// any other beta scales C in a separate pass first. M, N, K may be 0 (K == 0: C = beta * C).
//   op(A)(m, k) = a[m * lda + k]  (kN)   or  a[k * lda + m]  (kT)
//   op(B)(k, n) = b[k * ldb + n]  (kN)   or  b[n * ldb + k]  (kT)
// For a linear layer y = x W^T with x [T, in], W [out, in]:
//   forward  y  = x W^T : Sgemm(kN, kT, T, out, in, x, in, W, in, 0, y, out)
//   dgrad    dx = dy W  : Sgemm(kN, kN, T, in, out, dy, out, W, in, 0/1, dx, in)
//   wgrad    dW += dy^T x: Sgemm(kT, kN, out, in, T, dy, out, x, in, 1, dW, in)
// Float32 accumulation: each element sums its products in ascending k, in blocks of 256 whose
// partial sums are added to C in order. The result of each element does not depend on the thread
// count, nor on splitting the product into separate calls by rows or columns (bit-identical), and
// is the same on every target with FMA. Threads come from ParallelFor (nested calls run serially);
// packing scratch is per thread and grows once. C must not overlap A or B.
void Sgemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace dsv3::kernels
