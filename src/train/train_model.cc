// The trainer's model: one Block per decoder layer (MLA + dense MLP or MoE), each keeping what its
// backward pass needs. Linear layers are y = x W^T with W [out, in] as stored by Hugging Face;
// their three products are Sgemm calls (kernels/gemm.h).
#include "train/train_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/gemm.h"
#include "kernels/ops.h"
#include "model/moe.h"
#include "model/tensor_specs.h"
#include "train/linear.h"

namespace dsv3::train {
namespace {

using kernels::Sgemm;
using kernels::Trans;

// Interleaved RoPE of `pairs` pairs by the angles of one position; inverse rotates back (the
// gradient of a rotation is the opposite rotation).
void Rope(float* x, const float* cos, const float* sin, int64_t pairs, bool inverse) {
  for (int64_t i = 0; i < pairs; ++i) {
    const float x0 = x[2 * i], x1 = x[2 * i + 1];
    const float s = inverse ? -sin[i] : sin[i];
    x[2 * i] = x0 * cos[i] - x1 * s;
    x[2 * i + 1] = x0 * s + x1 * cos[i];
  }
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// SwiGLU MLP down(silu(gate(x)) * up(x)) on n rows, keeping gate, up and the product.
struct Mlp {
  Lin gate, up, down;
  int64_t I = 0;

  // routed: a routed expert, whose FP8 scales follow DeepSeek-V3 section 3.3.4 (powers of two
  // for the up-projection inputs and for the gradient before the down-projection).
  void Bind(Params& p, const std::string& prefix, LinearContext* ctx, bool routed) {
    gate = GetLin(p, prefix + "gate_proj.weight", ctx);
    up = GetLin(p, prefix + "up_proj.weight", ctx);
    down = GetLin(p, prefix + "down_proj.weight", ctx);
    gate.pow2_x = up.pow2_x = down.pow2_dy = routed;
    I = gate.out;
  }
  // x [n, D] -> y [n, D]; g, u, a [n, I] kept.
  void Forward(const float* x, int64_t n, float* g, float* u, float* a, float* y,
               double& flops) const {
    if (n == 0) return;
    LinFwd(gate, x, n, g, flops);
    LinFwd(up, x, n, u, flops);
    for (int64_t i = 0; i < n * I; ++i) a[i] = g[i] * Sigmoid(g[i]) * u[i];
    LinFwd(down, a, n, y, flops);
  }
  // dy [n, D] -> dx [n, D] (overwritten); scratch da, dg [n, I] (du reuses da).
  void Backward(const float* x, int64_t n, const float* g, const float* u, const float* a,
                const float* dy, float* dx, float* da, float* dg, double& flops) const {
    if (n == 0) return;
    LinBwd(down, a, dy, n, da, 0, flops);
    for (int64_t i = 0; i < n * I; ++i) {
      const float s = Sigmoid(g[i]), silu = g[i] * s;
      dg[i] = da[i] * u[i] * s * (1 + g[i] * (1 - s));
      da[i] = da[i] * silu;  // du
    }
    LinBwd(gate, x, dg, n, dx, 0, flops);
    LinBwd(up, x, da, n, dx, 1, flops);
  }
};

}  // namespace

// One decoder layer over B sequences of S tokens (S = T for the main model, T - 1 for MTP).
class Block {
 public:
  Block(Params& p, const Config& c, int64_t layer, int64_t B, int64_t S, const float* cos,
        const float* sin, float softmax_scale, double balance_alpha, MoeLayerStats* stats,
        LinearContext* ctx)
      : c_(c),
        B_(B),
        S_(S),
        rows_(B * S),
        cos_(cos),
        sin_(sin),
        scale_(softmax_scale),
        alpha_(balance_alpha),
        stats_(stats) {
    const std::string pre = LayerPrefix(layer), a = pre + "self_attn.";
    const int64_t D = c.hidden_size, H = c.num_attention_heads, NR = c.qk_head_dim();
    const int64_t C = c.kv_lora_rank, R = c.qk_rope_head_dim, N = c.qk_nope_head_dim;
    const int64_t V = c.v_head_dim, rows = rows_;
    attn_norm_ = GetNorm(p, pre + "input_layernorm.weight");
    ffn_norm_ = GetNorm(p, pre + "post_attention_layernorm.weight");
    if (c.q_lora_rank > 0) {
      q_a_ = GetLin(p, a + "q_a_proj.weight", ctx);
      q_a_norm_ = GetNorm(p, a + "q_a_layernorm.weight");
      q_b_ = GetLin(p, a + "q_b_proj.weight", ctx);
      qa_.resize(rows * c.q_lora_rank);
      qan_.resize(rows * c.q_lora_rank);
      rstd_qa_.resize(rows);
    } else {
      q_ = GetLin(p, a + "q_proj.weight", ctx);
    }
    kv_a_ = GetLin(p, a + "kv_a_proj_with_mqa.weight", ctx);
    kv_a_norm_ = GetNorm(p, a + "kv_a_layernorm.weight");
    kv_b_ = GetLin(p, a + "kv_b_proj.weight", ctx);
    o_ = GetLin(p, a + "o_proj.weight", ctx);
    o_.pow2_x = true;  // section 3.3.4: the input of the linear after attention
    xn_.resize(rows * D);
    rstd_attn_.resize(rows);
    q.resize(rows * H * NR);
    kva_.resize(rows * (C + R));
    cn_.resize(rows * C);
    rstd_kv_.resize(rows);
    kv_.resize(rows * H * (N + V));
    k_.resize(rows * H * NR);
    probs_.resize(B * H * S * S);
    heads_.resize(rows * H * V);
    h_.resize(rows * D);
    un_.resize(rows * D);
    rstd_ffn_.resize(rows);
    ffn_out_.resize(rows * D);
    const int64_t threads = NumThreads();
    attn_scratch_.resize(threads * S * S);
    dq_.resize(rows * H * NR);
    dk_.resize(rows * H * NR);
    dkv_.resize(rows * H * (N + V));
    dheads_.resize(rows * H * V);
    dkva_.resize(rows * (C + R));
    dcn_.resize(rows * C);
    if (c.q_lora_rank > 0) {
      dqan_.resize(rows * c.q_lora_rank);
      dqa_.resize(rows * c.q_lora_rank);
    }
    dxn_.resize(rows * D);
    dh_.resize(rows * D);
    du_.resize(rows * D);
    moe_ = c.IsMoeLayer(layer);
    if (!moe_) {
      mlp_.Bind(p, pre + "mlp.", ctx, false);
      const int64_t I = mlp_.I;
      g_.resize(rows * I);
      u_.resize(rows * I);
      act_.resize(rows * I);
      dA_.resize(rows * I);
      dG_.resize(rows * I);
      return;
    }
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
    router_ = GetLin(p, pre + "mlp.gate.weight", ctx, Precision::kF32);  // gating stays FP32
    const std::string bias_name = pre + "mlp.gate.e_score_correction_bias";
    bias_ = p.bias(bias_name);
    if (stats_ != nullptr) {
      stats_->bias_name = bias_ ? bias_name : "";
      stats_->load.assign(E, 0);
    }
    experts_.resize(E);
    for (int64_t e = 0; e < E; ++e)
      experts_[e].Bind(p, pre + "mlp.experts." + std::to_string(e) + ".", ctx, true);
    if (c.n_shared_experts > 0) shared_.Bind(p, pre + "mlp.shared_experts.", ctx, false);
    const int64_t Im = c.moe_intermediate_size, Is = c.shared_intermediate();
    logits_.resize(rows * E);
    scores_.resize(rows * E);
    idx_.resize(rows * K);
    w_.resize(rows * K);
    count_.resize(E);
    first_.resize(E + 1);
    slot_token_.resize(rows * K);
    slot_k_.resize(rows * K);
    xg_.resize(rows * K * D);
    eg_.resize(rows * K * Im);
    eu_.resize(rows * K * Im);
    ea_.resize(rows * K * Im);
    ey_.resize(rows * K * D);
    deY_.resize(rows * K * D);
    dxg_.resize(rows * K * D);
    dA_.resize(std::max(rows * K * Im, rows * Is));
    dG_.resize(std::max(rows * K * Im, rows * Is));
    g_.resize(rows * Is);
    u_.resize(rows * Is);
    act_.resize(rows * Is);
    shared_y_.resize(rows * D);
    dw_.resize(rows * K);
    dlogits_.resize(rows * E);
    f_.resize(B * E);
    router_scratch_ = std::make_unique<RouterScratch>(c);
  }

  // x [rows, D] -> y [rows, D] (y may not alias x).
  void Forward(const float* x, float* y, double& flops) {
    const int64_t D = c_.hidden_size, rows = rows_;
    const float eps = static_cast<float>(c_.rms_norm_eps);
    NormFwd(attn_norm_, x, rows, D, eps, xn_.data(), rstd_attn_.data());
    MlaForward(flops);  // xn_ -> h_ (the MLA output)
    for (int64_t i = 0; i < rows * D; ++i) h_[i] += x[i];
    NormFwd(ffn_norm_, h_.data(), rows, D, eps, un_.data(), rstd_ffn_.data());
    if (moe_) {
      MoeForward(flops);
    } else {
      mlp_.Forward(un_.data(), rows, g_.data(), u_.data(), act_.data(), ffn_out_.data(), flops);
    }
    for (int64_t i = 0; i < rows * D; ++i) y[i] = h_[i] + ffn_out_[i];
  }

  // dy [rows, D] -> dx [rows, D] (overwritten; may alias dy).
  void Backward(const float* x, const float* dy, float* dx, double& flops) {
    const int64_t D = c_.hidden_size, rows = rows_;
    if (moe_) {
      MoeBackward(dy, flops);  // -> du_
    } else {
      mlp_.Backward(un_.data(), rows, g_.data(), u_.data(), act_.data(), dy, du_.data(), dA_.data(),
                    dG_.data(), flops);
    }
    std::memcpy(dh_.data(), dy, rows * D * sizeof(float));
    NormBwd(ffn_norm_, h_.data(), D, rstd_ffn_.data(), du_.data(), D, rows, dh_.data(), D, true);
    MlaBackward(dh_.data(), flops);  // -> dxn_
    std::memcpy(dx, dh_.data(), rows * D * sizeof(float));
    NormBwd(attn_norm_, x, D, rstd_attn_.data(), dxn_.data(), D, rows, dx, D, true);
  }

  std::vector<float> q;  // [rows, H, N+R] queries after RoPE (public for tests' shape checks)

 private:
  void MlaForward(double& flops) {
    const int64_t rows = rows_, H = c_.num_attention_heads, NR = c_.qk_head_dim();
    const int64_t C = c_.kv_lora_rank, R = c_.qk_rope_head_dim, N = c_.qk_nope_head_dim;
    const int64_t V = c_.v_head_dim, NV = N + V, CR = C + R, S = S_, half = R / 2;
    const float eps = static_cast<float>(c_.rms_norm_eps);
    if (c_.q_lora_rank > 0) {
      LinFwd(q_a_, xn_.data(), rows, qa_.data(), flops);
      NormFwd(q_a_norm_, qa_.data(), rows, c_.q_lora_rank, eps, qan_.data(), rstd_qa_.data());
      LinFwd(q_b_, qan_.data(), rows, q.data(), flops);
    } else {
      LinFwd(q_, xn_.data(), rows, q.data(), flops);
    }
    LinFwd(kv_a_, xn_.data(), rows, kva_.data(), flops);  // [rows, C+R]
    // The latent normalized (kv_a_norm over its first C columns), k_pe rotated in place.
    for (int64_t r = 0; r < rows; ++r) {
      NormFwd(kv_a_norm_, kva_.data() + r * CR, 1, CR, eps, cn_.data() + r * C, &rstd_kv_[r]);
    }
    LinFwd(kv_b_, cn_.data(), rows, kv_.data(), flops);  // [rows, H*(N+V)]
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = r % S;
      const float *cs = cos_ + pos * half, *sn = sin_ + pos * half;
      float* kpe = kva_.data() + r * CR + C;
      Rope(kpe, cs, sn, half, false);
      for (int64_t h = 0; h < H; ++h) {
        Rope(q.data() + (r * H + h) * NR + N, cs, sn, half, false);
        float* kr = k_.data() + (r * H + h) * NR;
        std::memcpy(kr, kv_.data() + r * H * NV + h * NV, N * sizeof(float));
        std::memcpy(kr + N, kpe, R * sizeof(float));
      }
    }
    // Per (sequence, head): P = softmax(causal(Q K^T * scale)), heads = P V.
    ParallelFor(B_ * H, 1, [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / H, h = t % H;
        const float* qh = q.data() + (b * S * H + h) * NR;
        const float* kh = k_.data() + (b * S * H + h) * NR;
        const float* vh = kv_.data() + b * S * H * NV + h * NV + N;
        float* P = probs_.data() + t * S * S;
        Sgemm(Trans::kN, Trans::kT, S, S, NR, qh, H * NR, kh, H * NR, 0, P, S);
        for (int64_t i = 0; i < S; ++i) {
          float* row = P + i * S;
          for (int64_t j = 0; j <= i; ++j) row[j] *= scale_;
          kernels::Softmax(row, i + 1);
          std::fill(row + i + 1, row + S, 0.0f);
        }
        Sgemm(Trans::kN, Trans::kN, S, V, S, P, S, vh, H * NV, 0,
              heads_.data() + b * S * H * V + h * V, H * V);
      }
    });
    flops += 2.0 * B_ * H * S * S * (NR + V);
    LinFwd(o_, heads_.data(), rows, h_.data(), flops);
  }

  // dout [rows, D] (the gradient of the MLA output) -> dxn_.
  void MlaBackward(const float* dout, double& flops) {
    const int64_t rows = rows_, H = c_.num_attention_heads, NR = c_.qk_head_dim();
    const int64_t C = c_.kv_lora_rank, R = c_.qk_rope_head_dim, N = c_.qk_nope_head_dim;
    const int64_t V = c_.v_head_dim, NV = N + V, CR = C + R, S = S_, half = R / 2;
    LinBwd(o_, heads_.data(), dout, rows, dheads_.data(), 0, flops);
    ParallelFor(B_ * H, 1, [&](int64_t t0, int64_t t1, int thread) {
      float* dP = attn_scratch_.data() + thread * S * S;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / H, h = t % H;
        const int64_t qo = (b * S * H + h) * NR, vo = b * S * H * NV + h * NV;
        const float* P = probs_.data() + t * S * S;
        const float* dO = dheads_.data() + b * S * H * V + h * V;
        // dV = P^T dO into dkv's value columns; dP = dO V^T.
        Sgemm(Trans::kT, Trans::kN, S, V, S, P, S, dO, H * V, 0, dkv_.data() + vo + N, H * NV);
        Sgemm(Trans::kN, Trans::kT, S, S, V, dO, H * V, kv_.data() + vo + N, H * NV, 0, dP, S);
        // dScores = P * (dP - rowsum(P * dP)), times the softmax scale.
        for (int64_t i = 0; i < S; ++i) {
          float* d = dP + i * S;
          const float* pr = P + i * S;
          double dot = 0;
          for (int64_t j = 0; j <= i; ++j) dot += static_cast<double>(pr[j]) * d[j];
          for (int64_t j = 0; j <= i; ++j) d[j] = pr[j] * (d[j] - static_cast<float>(dot)) * scale_;
          std::fill(d + i + 1, d + S, 0.0f);
        }
        Sgemm(Trans::kN, Trans::kN, S, NR, S, dP, S, k_.data() + qo, H * NR, 0, dq_.data() + qo,
              H * NR);
        Sgemm(Trans::kT, Trans::kN, S, NR, S, dP, S, q.data() + qo, H * NR, 0, dk_.data() + qo,
              H * NR);
      }
    });
    flops += 4.0 * B_ * H * S * S * (NR + V);
    // Keys back to the latent path: k_nope into dkv, k_pe summed over heads; RoPE undone.
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = r % S;
      const float *cs = cos_ + pos * half, *sn = sin_ + pos * half;
      float* dkpe = dkva_.data() + r * CR + C;
      std::fill(dkpe, dkpe + R, 0.0f);
      for (int64_t h = 0; h < H; ++h) {
        const float* dk = dk_.data() + (r * H + h) * NR;
        std::memcpy(dkv_.data() + r * H * NV + h * NV, dk, N * sizeof(float));
        for (int64_t i = 0; i < R; ++i) dkpe[i] += dk[N + i];
        Rope(dq_.data() + (r * H + h) * NR + N, cs, sn, half, true);
      }
      Rope(dkpe, cs, sn, half, true);
    }
    LinBwd(kv_b_, cn_.data(), dkv_.data(), rows, dcn_.data(), 0, flops);
    for (int64_t r = 0; r < rows; ++r) {
      NormBwd(kv_a_norm_, kva_.data() + r * CR, CR, &rstd_kv_[r], dcn_.data() + r * C, C, 1,
              dkva_.data() + r * CR, CR, false);
    }
    LinBwd(kv_a_, xn_.data(), dkva_.data(), rows, dxn_.data(), 0, flops);
    if (c_.q_lora_rank > 0) {
      const int64_t QL = c_.q_lora_rank;
      LinBwd(q_b_, qan_.data(), dq_.data(), rows, dqan_.data(), 0, flops);
      NormBwd(q_a_norm_, qa_.data(), QL, rstd_qa_.data(), dqan_.data(), QL, rows, dqa_.data(), QL,
              false);
      LinBwd(q_a_, xn_.data(), dqa_.data(), rows, dxn_.data(), 1, flops);
    } else {
      LinBwd(q_, xn_.data(), dq_.data(), rows, dxn_.data(), 1, flops);
    }
  }

  // un_ -> ffn_out_: routed experts (selected per token) + shared experts.
  void MoeForward(double& flops) {
    const int64_t rows = rows_, D = c_.hidden_size, E = c_.n_routed_experts;
    const int64_t K = c_.num_experts_per_tok, Im = c_.moe_intermediate_size;
    LinFwd(router_, un_.data(), rows, logits_.data(), flops);
    const float* bias = bias_ ? bias_->data() : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      const float* lg = logits_.data() + r * E;
      float* s = scores_.data() + r * E;
      if (c_.scoring_func == ScoringFunc::kSigmoid) {
        for (int64_t e = 0; e < E; ++e) s[e] = Sigmoid(lg[e]);
      } else {
        std::memcpy(s, lg, E * sizeof(float));
        kernels::Softmax(s, E);
      }
      RouteToken(c_, lg, bias, *router_scratch_, idx_.data() + r * K, w_.data() + r * K);
    }
    // Slots grouped by expert (counting sort, tokens ascending within an expert).
    std::fill(count_.begin(), count_.end(), 0);
    for (int64_t i = 0; i < rows * K; ++i) ++count_[idx_[i]];
    first_[0] = 0;
    for (int64_t e = 0; e < E; ++e) first_[e + 1] = first_[e] + count_[e];
    std::fill(count_.begin(), count_.end(), 0);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = idx_[r * K + k];
        const int32_t slot = first_[e] + count_[e]++;
        slot_token_[slot] = static_cast<int32_t>(r);
        slot_k_[slot] = static_cast<int32_t>(k);
        std::memcpy(xg_.data() + slot * D, un_.data() + r * D, D * sizeof(float));
      }
    }
    for (int64_t e = 0; e < E; ++e) {
      const int64_t s0 = first_[e], n = first_[e + 1] - s0;
      experts_[e].Forward(xg_.data() + s0 * D, n, eg_.data() + s0 * Im, eu_.data() + s0 * Im,
                          ea_.data() + s0 * Im, ey_.data() + s0 * D, flops);
    }
    if (c_.n_shared_experts > 0) {
      shared_.Forward(un_.data(), rows, g_.data(), u_.data(), act_.data(), ffn_out_.data(), flops);
    } else {
      std::fill(ffn_out_.begin(), ffn_out_.end(), 0.0f);
    }
    for (int64_t slot = 0; slot < rows * K; ++slot) {
      const int64_t r = slot_token_[slot];
      kernels::Axpy(w_[r * K + slot_k_[slot]], ey_.data() + slot * D, ffn_out_.data() + r * D, D);
    }
    // Loads and the sequence-wise balance loss: f [B, E] (a constant), P from the scores.
    if (stats_ != nullptr) {
      std::fill(stats_->load.begin(), stats_->load.end(), 0);
      for (int64_t e = 0; e < E; ++e) stats_->load[e] = first_[e + 1] - first_[e];
    }
    std::fill(f_.begin(), f_.end(), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < K; ++k) f_[(r / S_) * E + idx_[r * K + k]] += 1;
    const double fscale = static_cast<double>(E) / (K * S_);
    double loss = 0;
    for (int64_t b = 0; b < B_; ++b) {
      for (int64_t r = b * S_; r < (b + 1) * S_; ++r) {
        const float* s = scores_.data() + r * E;
        double sum = 0;
        for (int64_t e = 0; e < E; ++e) sum += s[e];
        if (c_.scoring_func == ScoringFunc::kSoftmax) sum = 1;
        for (int64_t e = 0; e < E; ++e) loss += f_[b * E + e] * fscale * (s[e] / sum) / S_;
      }
    }
    balance_loss_ = alpha_ * loss / B_;
    if (stats_ != nullptr) stats_->balance_loss = balance_loss_;
  }

  // dout [rows, D] (gradient of the FFN output) -> du_ (gradient of the FFN input).
  void MoeBackward(const float* dout, double& flops) {
    const int64_t rows = rows_, D = c_.hidden_size, E = c_.n_routed_experts;
    const int64_t K = c_.num_experts_per_tok, Im = c_.moe_intermediate_size;
    if (c_.n_shared_experts > 0) {
      shared_.Backward(un_.data(), rows, g_.data(), u_.data(), act_.data(), dout, du_.data(),
                       dA_.data(), dG_.data(), flops);
    } else {
      std::fill(du_.begin(), du_.end(), 0.0f);
    }
    // Per slot: dw = dout . y, dy = w * dout.
    for (int64_t slot = 0; slot < rows * K; ++slot) {
      const int64_t r = slot_token_[slot], k = slot_k_[slot];
      const float* d = dout + r * D;
      dw_[r * K + k] = kernels::Dot(d, ey_.data() + slot * D, D);
      const float w = w_[r * K + k];
      float* dy = deY_.data() + slot * D;
      for (int64_t i = 0; i < D; ++i) dy[i] = w * d[i];
    }
    for (int64_t e = 0; e < E; ++e) {
      const int64_t s0 = first_[e], n = first_[e + 1] - s0;
      experts_[e].Backward(xg_.data() + s0 * D, n, eg_.data() + s0 * Im, eu_.data() + s0 * Im,
                           ea_.data() + s0 * Im, deY_.data() + s0 * D, dxg_.data() + s0 * D,
                           dA_.data() + s0 * Im, dG_.data() + s0 * Im, flops);
    }
    for (int64_t slot = 0; slot < rows * K; ++slot)
      kernels::Add(dxg_.data() + slot * D, du_.data() + slot_token_[slot] * D, D);
    // Router: d scores from the routing weights and from the balance loss, then d logits.
    const double fscale = static_cast<double>(E) / (K * S_);
    const float scale = static_cast<float>(c_.routed_scaling_factor);
    std::vector<float>& ds = dlogits_;  // d scores first, converted in place
    for (int64_t r = 0; r < rows; ++r) {
      const float* s = scores_.data() + r * E;
      float* d = ds.data() + r * E;
      const int32_t* idx = idx_.data() + r * K;
      const float* dw = dw_.data() + r * K;
      std::fill(d, d + E, 0.0f);
      if (c_.norm_topk_prob) {
        // w_k = scale * s_k / sum_sel s: ds_k = scale / sum * (dw_k - sum_j dw_j s_j / sum)
        double sum = 0, dot = 0;
        for (int64_t k = 0; k < K; ++k) sum += s[idx[k]];
        sum += 1e-20;
        for (int64_t k = 0; k < K; ++k) dot += static_cast<double>(dw[k]) * s[idx[k]];
        for (int64_t k = 0; k < K; ++k)
          d[idx[k]] += static_cast<float>(scale / sum * (dw[k] - dot / sum));
      } else {
        for (int64_t k = 0; k < K; ++k) d[idx[k]] += scale * dw[k];
      }
      // Balance loss: dL/ds'_j = alpha / B * f_{b,j} / S.
      const int64_t b = r / S_;
      const double a = alpha_ / B_ / S_;
      if (c_.scoring_func == ScoringFunc::kSigmoid) {
        double sum = 0, dot = 0;
        for (int64_t e = 0; e < E; ++e) sum += s[e];
        for (int64_t e = 0; e < E; ++e) dot += a * f_[b * E + e] * fscale * (s[e] / sum);
        for (int64_t e = 0; e < E; ++e)
          d[e] += static_cast<float>((a * f_[b * E + e] * fscale - dot) / sum);
        for (int64_t e = 0; e < E; ++e) d[e] *= s[e] * (1 - s[e]);  // sigmoid'
      } else {
        for (int64_t e = 0; e < E; ++e) d[e] += static_cast<float>(a * f_[b * E + e] * fscale);
        double dot = 0;
        for (int64_t e = 0; e < E; ++e) dot += static_cast<double>(s[e]) * d[e];
        for (int64_t e = 0; e < E; ++e) d[e] = s[e] * (d[e] - static_cast<float>(dot));
      }
    }
    LinBwd(router_, un_.data(), ds.data(), rows, du_.data(), 1, flops);
  }

  const Config& c_;
  int64_t B_, S_, rows_;
  const float *cos_, *sin_;  // [S, R/2]
  float scale_;
  double alpha_;
  MoeLayerStats* stats_;
  Norm attn_norm_, ffn_norm_, q_a_norm_, kv_a_norm_;
  Lin q_a_, q_b_, q_, kv_a_, kv_b_, o_;
  bool moe_ = false;
  Mlp mlp_, shared_;
  std::vector<Mlp> experts_;
  Lin router_;
  std::vector<float>* bias_ = nullptr;
  std::unique_ptr<RouterScratch> router_scratch_;
  double balance_loss_ = 0;
  // Forward activations (rows = B * S)
  std::vector<float> xn_, rstd_attn_;         // [rows, D], [rows]
  std::vector<float> qa_, qan_, rstd_qa_;     // [rows, q_lora]
  std::vector<float> kva_, cn_, rstd_kv_;     // [rows, C+R] (k_pe rotated), [rows, C]
  std::vector<float> kv_;                     // [rows, H, N+V]
  std::vector<float> k_;                      // [rows, H, N+R]
  std::vector<float> probs_;                  // [B, H, S, S]
  std::vector<float> heads_;                  // [rows, H*V]
  std::vector<float> h_;                      // [rows, D] residual after attention
  std::vector<float> un_, rstd_ffn_;          // [rows, D] FFN input
  std::vector<float> ffn_out_;                // [rows, D]
  std::vector<float> g_, u_, act_;            // dense or shared MLP [rows, I]
  std::vector<float> logits_, scores_;        // [rows, E]
  std::vector<int32_t> idx_;                  // [rows, K]
  std::vector<float> w_;                      // [rows, K]
  std::vector<int32_t> count_, first_;        // [E], [E+1]
  std::vector<int32_t> slot_token_, slot_k_;  // [rows*K]
  std::vector<float> xg_, ey_;                // [rows*K, D]
  std::vector<float> eg_, eu_, ea_;           // [rows*K, Im]
  std::vector<float> shared_y_;
  std::vector<double> f_;  // [B, E] routed counts per sequence
  // Backward scratch
  std::vector<float> attn_scratch_;  // [threads, S, S]
  std::vector<float> dq_, dk_, dkv_, dheads_, dkva_, dcn_, dqan_, dqa_, dxn_, dh_, du_;
  std::vector<float> dA_, dG_, deY_, dxg_, dw_, dlogits_;
};

namespace {
// Cross-entropy rows: probabilities in place of logits [n, V]; loss per row; returns the sum
// (rows in parallel, summed in row order).
double SoftmaxCe(float* logits, int64_t n, int64_t V, const int32_t* targets, float* per_row) {
  ParallelFor(n, 1, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = logits + r * V;
      const int64_t top = std::max_element(row, row + V) - row;
      const float gap = row[top] - row[targets[r]];
      kernels::Softmax(row, V);  // exp(x - max) / S
      // -log p_target = max - x_target + log S, and the top entry holds exp(0) / S = 1 / S: no
      // underflow however unlikely the target.
      per_row[r] = gap - std::log(row[top]);
    }
  });
  double total = 0;
  for (int64_t r = 0; r < n; ++r) total += per_row[r];
  return total;
}
// probabilities -> d logits = (p - onehot) * weight, in place.
void CeGrad(float* probs, int64_t n, int64_t V, const int32_t* targets, float weight) {
  ParallelFor(n, 1, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = probs + r * V;
      row[targets[r]] -= 1.0f;
      for (int64_t v = 0; v < V; ++v) row[v] *= weight;
    }
  });
}
}  // namespace

double TrainFlopsPerToken(const Config& c, int64_t seq) {
  const double D = c.hidden_size, H = c.num_attention_heads, N = c.qk_nope_head_dim;
  const double R = c.qk_rope_head_dim, V = c.v_head_dim, C = c.kv_lora_rank, Q = c.q_lora_rank;
  const double attn_proj = (Q > 0 ? 2 * (D * Q + Q * H * (N + R)) : 2 * D * H * (N + R)) +
                           2 * D * (C + R) + 2 * C * H * (N + V) + 2 * H * V * D;
  auto layer = [&](int64_t i, double len) {
    const double core = 2 * (H * (N + R) + H * V) * (len + 1) / 2;
    const double ffn = c.IsMoeLayer(i)
                           ? 2 * D * c.n_routed_experts +
                                 c.num_experts_per_tok * 6 * D * c.moe_intermediate_size +
                                 6 * D * c.shared_intermediate()
                           : 6 * D * c.intermediate_size;
    return attn_proj + core + ffn;
  };
  const double head = 2 * D * c.vocab_size, T = static_cast<double>(seq);
  double main = head;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) main += layer(i, T);
  double total = T * main;
  for (int64_t k = 1; k <= c.num_nextn_predict_layers; ++k)
    total += (T - k) * (4 * D * D + layer(c.num_hidden_layers + k - 1, T - k) + head);
  return 3 * total / T;
}

TrainModel::TrainModel(Params& params, int64_t batch, int64_t seq, const Objective& objective,
                       Precision precision)
    : p_(params),
      c_(params.config()),
      obj_(objective),
      ctx_(precision),
      B_(batch),
      T_(seq),
      rope_(ComputeRope(c_)) {
  const Config& c = c_;
  const int64_t D = c.hidden_size, rows = B_ * T_, V = c.vocab_size;
  const int64_t L = c.num_hidden_layers, half = c.qk_rope_head_dim / 2;
  if (c.num_nextn_predict_layers > 1)
    Fail("trainer: num_nextn_predict_layers {} (MTP depth > 1 is not supported yet)",
         c.num_nextn_predict_layers);
  if (c.num_nextn_predict_layers > 0 && T_ < 2)
    Fail("trainer: MTP needs sequences of at least 2 tokens, got {}", T_);
  head_embed_ = p_.value("model.embed_tokens.weight");
  embed_grad_ = p_.grad("model.embed_tokens.weight");
  final_norm_ = GetNorm(p_, "model.norm.weight");
  // The output head stays in BF16 under FP8 (section 3.3); float32 in fp32 mode.
  head_ = GetLin(p_, c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", &ctx_,
                 precision == Precision::kF32 ? Precision::kF32 : Precision::kBF16);
  if (c.num_nextn_predict_layers > 0) {
    const std::string pre = LayerPrefix(L);
    eh_proj_ = GetLin(p_, pre + "eh_proj.weight", &ctx_);
    enorm_ = GetNorm(p_, pre + "enorm.weight");
    hnorm_ = GetNorm(p_, pre + "hnorm.weight");
    head_norm_ = GetNorm(p_, pre + "shared_head.norm.weight");
  }
  cos_.resize(T_ * half);
  sin_.resize(T_ * half);
  for (int64_t t = 0; t < T_; ++t) rope_.Angles(t, cos_.data() + t * half, sin_.data() + t * half);
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < L + c.num_nextn_predict_layers; ++l) moe_layers += c.IsMoeLayer(l);
  moe_stats_.resize(moe_layers);
  int64_t m = 0;
  for (int64_t l = 0; l < L + c.num_nextn_predict_layers; ++l) {
    MoeLayerStats* stats = nullptr;
    if (c.IsMoeLayer(l)) {
      stats = &moe_stats_[m++];
      stats->layer = l;
      stats->is_mtp = l >= L;
    }
    const int64_t S = l < L ? T_ : T_ - 1;
    blocks_.push_back(std::make_unique<Block>(p_, c, l, B_, S, cos_.data(), sin_.data(),
                                              rope_.softmax_scale, obj_.balance_alpha, stats,
                                              &ctx_));
  }
  inputs_.resize(rows);
  targets_.resize(rows);
  x_.resize((L + 1) * rows * D);
  hn_.resize(rows * D);
  rstd_final_.resize(rows);
  logits_.resize(rows * V);
  ce_pos_.resize(rows);
  dx_.resize(rows * D);
  dhn_.resize(rows * D);
  if (c.num_nextn_predict_layers > 0) {
    const int64_t M = B_ * (T_ - 1);
    mtp_e_.resize(M * D);
    mtp_en_.resize(M * D);
    mtp_rstd_e_.resize(M);
    mtp_hh_.resize(M * D);
    mtp_rstd_h_.resize(M);
    mtp_cat_.resize(M * 2 * D);
    mtp_x_.resize(M * D);
    mtp_y_.resize(M * D);
    mtp_yn_.resize(M * D);
    mtp_rstd_y_.resize(M);
    mtp_logits_.resize(M * V);
    mtp_tokens_.resize(M);
    mtp_targets_.resize(M);
    mtp_ce_pos_.resize(M);
    dcat_.resize(M * 2 * D);
    dtmp_.resize(M * D);
  }
}

TrainModel::~TrainModel() = default;

Losses TrainModel::Forward(const int32_t* tokens) {
  const Config& c = c_;
  const int64_t D = c.hidden_size, rows = B_ * T_, V = c.vocab_size, L = c.num_hidden_layers;
  const float eps = static_cast<float>(c.rms_norm_eps);
  flops_ = 0;
  ctx_.WeightsChanged();
  const float* embed = head_embed_;
  for (int64_t b = 0; b < B_; ++b) {
    for (int64_t t = 0; t < T_; ++t) {
      const int32_t in = tokens[b * (T_ + 1) + t], out = tokens[b * (T_ + 1) + t + 1];
      if (in < 0 || in >= V || out < 0 || out >= V)
        Fail("trainer: token id out of range [0, {}) at batch row {}, position {}", V, b, t);
      inputs_[b * T_ + t] = in;
      targets_[b * T_ + t] = out;
    }
  }
  float* x = x_.data();
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(x + r * D, embed + static_cast<int64_t>(inputs_[r]) * D, D * sizeof(float));
  for (int64_t l = 0; l < L; ++l)
    blocks_[l]->Forward(x + l * rows * D, x + (l + 1) * rows * D, flops_);
  NormFwd(final_norm_, x + L * rows * D, rows, D, eps, hn_.data(), rstd_final_.data());
  LinFwd(head_, hn_.data(), rows, logits_.data(), flops_);
  if (keep_logits_) kept_logits_.assign(logits_.begin(), logits_.end());
  Losses out;
  out.ce = SoftmaxCe(logits_.data(), rows, V, targets_.data(), ce_pos_.data()) / rows;

  if (c.num_nextn_predict_layers > 0) {
    // Slot i of sequence b: the embedding of t_{i+1} (= targets[b, i]) with hn[b, i], predicting
    // t_{i+2} (= targets[b, i + 1]); the last position has no target and is not computed.
    const int64_t S = T_ - 1, M = B_ * S;
    for (int64_t b = 0; b < B_; ++b) {
      for (int64_t i = 0; i < S; ++i) {
        const int64_t r = b * S + i;
        mtp_tokens_[r] = targets_[b * T_ + i];
        mtp_targets_[r] = targets_[b * T_ + i + 1];
        std::memcpy(mtp_e_.data() + r * D, embed + static_cast<int64_t>(mtp_tokens_[r]) * D,
                    D * sizeof(float));
      }
    }
    NormFwd(enorm_, mtp_e_.data(), M, D, eps, mtp_en_.data(), mtp_rstd_e_.data());
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t i = 0; i < S; ++i)
        std::memcpy(mtp_hh_.data() + (b * S + i) * D, hn_.data() + (b * T_ + i) * D,
                    D * sizeof(float));
    // hnorm in place over the copied rows of hn (its input stays in hn_).
    std::vector<float>& hh = mtp_hh_;
    NormFwd(hnorm_, hh.data(), M, D, eps, hh.data(), mtp_rstd_h_.data());
    for (int64_t r = 0; r < M; ++r) {
      std::memcpy(mtp_cat_.data() + r * 2 * D, mtp_en_.data() + r * D, D * sizeof(float));
      std::memcpy(mtp_cat_.data() + r * 2 * D + D, hh.data() + r * D, D * sizeof(float));
    }
    LinFwd(eh_proj_, mtp_cat_.data(), M, mtp_x_.data(), flops_);
    blocks_[L]->Forward(mtp_x_.data(), mtp_y_.data(), flops_);
    NormFwd(head_norm_, mtp_y_.data(), M, D, eps, mtp_yn_.data(), mtp_rstd_y_.data());
    LinFwd(head_, mtp_yn_.data(), M, mtp_logits_.data(), flops_);
    out.mtp_ce = SoftmaxCe(mtp_logits_.data(), M, V, mtp_targets_.data(), mtp_ce_pos_.data()) / M;
  }
  for (const MoeLayerStats& s : moe_stats_) out.balance += s.balance_loss;
  out.total = out.ce + obj_.mtp_lambda * out.mtp_ce + out.balance;
  return out;
}

void TrainModel::Backward() {
  const Config& c = c_;
  const int64_t D = c.hidden_size, rows = B_ * T_, V = c.vocab_size, L = c.num_hidden_layers;
  float* dembed = embed_grad_;
  std::fill(dhn_.begin(), dhn_.end(), 0.0f);
  if (c.num_nextn_predict_layers > 0) {
    const int64_t S = T_ - 1, M = B_ * S;
    CeGrad(mtp_logits_.data(), M, V, mtp_targets_.data(), static_cast<float>(obj_.mtp_lambda / M));
    LinBwd(head_, mtp_yn_.data(), mtp_logits_.data(), M, dtmp_.data(), 0, flops_);  // d yn
    // d y into mtp_yn_ (read for the last time above), then through the MTP block in place.
    NormBwd(head_norm_, mtp_y_.data(), D, mtp_rstd_y_.data(), dtmp_.data(), D, M, mtp_yn_.data(), D,
            false);
    blocks_[L]->Backward(mtp_x_.data(), mtp_yn_.data(), mtp_yn_.data(), flops_);
    LinBwd(eh_proj_, mtp_cat_.data(), mtp_yn_.data(), M, dcat_.data(), 0, flops_);
    // Embedding half: through enorm into the embedding rows of t_{i+1}.
    NormBwd(enorm_, mtp_e_.data(), D, mtp_rstd_e_.data(), dcat_.data(), 2 * D, M, dtmp_.data(), D,
            false);
    for (int64_t r = 0; r < M; ++r)
      kernels::Add(dtmp_.data() + r * D, dembed + static_cast<int64_t>(mtp_tokens_[r]) * D, D);
    // Hidden half: through hnorm into hn at main position i.
    for (int64_t b = 0; b < B_; ++b) {
      NormBwd(hnorm_, hn_.data() + b * T_ * D, D, mtp_rstd_h_.data() + b * S,
              dcat_.data() + b * S * 2 * D + D, 2 * D, S, dhn_.data() + b * T_ * D, D, true);
    }
  }
  CeGrad(logits_.data(), rows, V, targets_.data(), 1.0f / rows);
  LinBwd(head_, hn_.data(), logits_.data(), rows, dhn_.data(), 1, flops_);
  float* x = x_.data();
  NormBwd(final_norm_, x + L * rows * D, D, rstd_final_.data(), dhn_.data(), D, rows, dx_.data(), D,
          false);
  for (int64_t l = L - 1; l >= 0; --l)
    blocks_[l]->Backward(x + l * rows * D, dx_.data(), dx_.data(), flops_);
  for (int64_t r = 0; r < rows; ++r)
    kernels::Add(dx_.data() + r * D, dembed + static_cast<int64_t>(inputs_[r]) * D, D);
}

}  // namespace dsv3::train
