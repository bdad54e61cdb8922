// Building blocks of blocked ("flash") attention with an online softmax, for any head layout:
// scores of a few queries against a block of keys, the running-softmax update, and the
// probability-weighted sum of value rows. Rows are addressed with explicit strides so the same
// code serves MLA's absorbed decode (queries = heads, keys = latent cache rows) and its expanded
// prefill (queries = tokens, keys = per-head keys).
#pragma once

#include <cstdint>

namespace dsv3::kernels {

// scores[q * nk + k] = (Q[q] . K[k]) * scale over d elements, q < nq, k < nk.
// Q rows are q_stride floats apart, K rows k_stride apart.
void QKScores(const float* Q, int64_t q_stride, int64_t nq, const float* K, int64_t k_stride,
              int64_t nk, int64_t d, float scale, float* scores);

// One query's block of scores -> unnormalized probabilities, in place: with m the running max and
// l the running sum of exp(score - m) over the blocks seen so far, sets m to the new max, the
// scores to exp(score - m), l to the rescaled sum including them, and returns the factor
// exp(m_old - m_new) by which earlier accumulated outputs must be multiplied. -inf scores
// (masked) become 0.
float OnlineSoftmax(float* scores, int64_t n, float& m, float& l);

// O[q][j] += sum_k P[q * nk + k] * V[k][j] for q < nq, j < dv. V rows are v_stride floats apart,
// O rows o_stride apart.
void PVAccumulate(const float* P, int64_t nq, int64_t nk, const float* V, int64_t v_stride,
                  int64_t dv, float* O, int64_t o_stride);

// y[i] *= a
void Scale(float a, float* y, int64_t n);

}  // namespace dsv3::kernels
