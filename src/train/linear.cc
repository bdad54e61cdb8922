#include "train/linear.h"

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "kernels/gemm.h"
#include "kernels/quant_gemm.h"

namespace dsv3::train {

using kernels::kQuantTile;
using kernels::Sgemm;
using kernels::Trans;

const char* PrecisionName(Precision p) {
  switch (p) {
    case Precision::kF32:
      return "fp32";
    case Precision::kBF16:
      return "bf16";
    case Precision::kFP8:
      return "fp8";
  }
  return "?";
}

std::optional<Precision> PrecisionFromName(std::string_view name) {
  if (name == "fp32" || name == "f32") return Precision::kF32;
  if (name == "bf16") return Precision::kBF16;
  if (name == "fp8") return Precision::kFP8;
  return std::nullopt;
}

LinQuant* LinearContext::NewCache() {
  caches_.push_back(std::make_unique<LinQuant>());
  return caches_.back().get();
}

Lin GetLin(Params& p, const std::string& name, LinearContext* ctx,
           std::optional<Precision> precision) {
  const ParamInfo* i = p.Find(name);
  if (i == nullptr || i->shape.size() != 2) Fail("trainer: no linear parameter '{}'", name);
  Lin l{p.values() + i->offset, p.grads() + i->offset, i->shape[0], i->shape[1]};
  if (ctx != nullptr) {
    l.precision = precision.value_or(ctx->precision());
    l.ctx = ctx;
    if (l.precision != Precision::kF32) l.cache = ctx->NewCache();
  }
  return l;
}
Norm GetNorm(Params& p, const std::string& name) {
  const ParamInfo* i = p.Find(name);
  if (i == nullptr || i->shape.size() != 1) Fail("trainer: no norm parameter '{}'", name);
  return {p.values() + i->offset, p.grads() + i->offset, i->shape[0]};
}

namespace {

int64_t Pad(int64_t n) { return (n + kQuantTile - 1) / kQuantTile * kQuantTile; }

template <typename T>
T* Grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// The weight's quantized copies for the current parameters (made once per forward pass).
const LinQuant& Quantized(const Lin& l) {
  LinQuant& c = *l.cache;
  if (c.version == l.ctx->version()) return c;
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t ip = Pad(l.in), op = Pad(l.out);
  c.q.resize(l.out * ip);
  c.qt.resize(l.in * op);
  if (l.precision == Precision::kBF16) {
    kernels::ToBF16(l.w, l.out, l.in, l.in, c.q.data(), ip);
    kernels::ToBF16Transposed(l.w, l.out, l.in, l.in, c.qt.data(), op);
  } else {
    const int64_t br = op / kQuantTile, bc = ip / kQuantTile;
    c.blocks.resize(br * bc);
    kernels::QuantizeE4M3Blocks(l.w, l.out, l.in, l.in, /*pow2=*/false, c.q.data(), ip, c.qt.data(),
                                op, c.blocks.data());
    // Block scales expanded per row: s[r][kb] for W's rows, st[i][ob] for W^T's.
    c.s.resize(l.out * bc);
    c.st.resize(l.in * br);
    for (int64_t r = 0; r < l.out; ++r)
      for (int64_t kb = 0; kb < bc; ++kb) c.s[r * bc + kb] = c.blocks[(r / kQuantTile) * bc + kb];
    for (int64_t i = 0; i < l.in; ++i)
      for (int64_t ob = 0; ob < br; ++ob) c.st[i * br + ob] = c.blocks[ob * bc + i / kQuantTile];
  }
  c.version = l.ctx->version();
  l.ctx->quant_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return c;
}

// The activation-side operand [rows, cols] with the reduction along cols (transposed: along
// rows, written [cols, rows_pad]): BF16, or E4M3 tiles with their scales.
const uint16_t* Operand(const Lin& l, const float* x, int64_t rows, int64_t cols, bool transposed,
                        bool pow2, std::vector<uint16_t>& q, std::vector<float>& s,
                        const float** scales) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t out_rows = transposed ? cols : rows, k = Pad(transposed ? rows : cols);
  uint16_t* dst = Grow(q, out_rows * k);
  *scales = nullptr;
  if (l.precision == Precision::kBF16) {
    if (transposed) {
      kernels::ToBF16Transposed(x, rows, cols, cols, dst, k);
    } else {
      kernels::ToBF16(x, rows, cols, cols, dst, k);
    }
  } else {
    float* sc = Grow(s, out_rows * (k / kQuantTile));
    if (transposed) {
      kernels::QuantizeE4M3TilesTransposed(x, rows, cols, cols, pow2, dst, k, sc);
    } else {
      kernels::QuantizeE4M3Tiles(x, rows, cols, cols, pow2, dst, k, sc);
    }
    *scales = sc;
  }
  l.ctx->quant_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return dst;
}

}  // namespace

// y [n, out] = x [n, in] W^T
void LinFwd(const Lin& l, const float* x, int64_t n, float* y, double& flops) {
  flops += 2.0 * n * l.out * l.in;
  if (l.precision == Precision::kF32) {
    Sgemm(Trans::kN, Trans::kT, n, l.out, l.in, x, l.in, l.w, l.in, 0, y, l.out);
    return;
  }
  const LinQuant& w = Quantized(l);
  const int64_t ip = Pad(l.in), kb = ip / kQuantTile;
  const float* sx;
  const uint16_t* qx = Operand(l, x, n, l.in, false, l.pow2_x, l.ctx->qa, l.ctx->sa, &sx);
  kernels::Bf16Gemm(n, l.out, ip, qx, ip, sx, kb, w.q.data(), ip, sx ? w.s.data() : nullptr, kb, 0,
                    y, l.out);
}

// dW += dy^T x; dx = beta * dx + dy W (dx may be null: no input gradient wanted).
void LinBwd(const Lin& l, const float* x, const float* dy, int64_t n, float* dx, float beta,
            double& flops) {
  if (n == 0) return;
  flops += (dx != nullptr ? 4.0 : 2.0) * n * l.out * l.in;
  if (l.precision == Precision::kF32) {
    Sgemm(Trans::kT, Trans::kN, l.out, l.in, n, dy, l.out, x, l.in, 1, l.g, l.in);
    if (dx != nullptr)
      Sgemm(Trans::kN, Trans::kN, n, l.in, l.out, dy, l.out, l.w, l.in, beta, dx, l.in);
    return;
  }
  LinearContext& ctx = *l.ctx;
  // Wgrad: dW [out, in] += dy^T [out, n] x [n, in], both operands tiled along the tokens.
  const int64_t np = Pad(n), nb = np / kQuantTile;
  const float *sdy, *sx;
  const uint16_t* qdy = Operand(l, dy, n, l.out, true, l.pow2_dy, ctx.qa, ctx.sa, &sdy);
  const uint16_t* qx = Operand(l, x, n, l.in, true, l.pow2_x, ctx.qb, ctx.sb, &sx);
  kernels::Bf16Gemm(l.out, l.in, np, qdy, np, sdy, nb, qx, np, sx, nb, 1, l.g, l.in);
  if (dx == nullptr) return;
  // Dgrad: dx [n, in] = dy [n, out] W [out, in], reduction over out.
  const LinQuant& w = Quantized(l);
  const int64_t op = Pad(l.out), ob = op / kQuantTile;
  const uint16_t* q = Operand(l, dy, n, l.out, false, l.pow2_dy, ctx.qa, ctx.sa, &sdy);
  kernels::Bf16Gemm(n, l.in, op, q, op, sdy, ob, w.qt.data(), op, sdy ? w.st.data() : nullptr, ob,
                    beta, dx, l.in);
}

// y [rows, n] = x * rstd * w, rows of stride ld (x and y), rstd [rows] kept for the backward.
void NormFwd(const Norm& nm, const float* x, int64_t rows, int64_t ld, float eps, float* y,
             float* rstd) {
  const int64_t n = nm.n;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float rs = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
    rstd[r] = rs;
    float* yr = y + r * ld;
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * rs * nm.w[i];
  }
}
// dx = (accumulate ? dx : 0) + d/dx of the norm; dw += sum over rows of dy * x * rstd.
void NormBwd(const Norm& nm, const float* x, int64_t ldx, const float* rstd, const float* dy,
             int64_t ldy, int64_t rows, float* dx, int64_t ldd, bool accumulate) {
  const int64_t n = nm.n;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    const float* dyr = dy + r * ldy;
    const float rs = rstd[r];
    double dot = 0;  // sum dy * w * x
    for (int64_t i = 0; i < n; ++i) {
      dot += static_cast<double>(dyr[i]) * nm.w[i] * xr[i];
      nm.g[i] += dyr[i] * xr[i] * rs;
    }
    const float k = static_cast<float>(dot / n) * rs * rs * rs;
    float* dxr = dx + r * ldd;
    for (int64_t i = 0; i < n; ++i) {
      const float v = rs * dyr[i] * nm.w[i] - xr[i] * k;
      dxr[i] = accumulate ? dxr[i] + v : v;
    }
  }
}

}  // namespace dsv3::train
