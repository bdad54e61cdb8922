// The linear layers and norms of the trainer: parameter views and their forward and backward
// products. Linear layers are y = x W^T with W [out, in] as Hugging Face stores them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "train/params.h"

namespace dsv3::train {

// The products of the linear layers (Fprop, Dgrad, Wgrad): float32; BF16 inputs with float32
// accumulation; or DeepSeek-V3's FP8 recipe (E4M3 inputs, 1x128 activation tiles, 128x128
// weight blocks, float32 accumulation per 128-element block).
enum class Precision { kF32, kBF16, kFP8 };
const char* PrecisionName(Precision p);  // "fp32", "bf16", "fp8"
std::optional<Precision> PrecisionFromName(std::string_view name);

// The quantized copies of one weight for the current parameters (BF16 and FP8 modes): W and
// W^T with the reduction dimension contiguous and padded to a multiple of 128, and for FP8 the
// 128x128 block scales expanded per row of each.
struct LinQuant {
  std::vector<uint16_t> q, qt;  // [out, in_pad], [in, out_pad] (BF16 bits; E4M3 values for FP8)
  std::vector<float> s, st;     // [out, in_pad / 128], [in, out_pad / 128]
  std::vector<float> blocks;    // [ceil(out / 128), ceil(in / 128)]
  uint64_t version = 0;         // the LinearContext version it was made for
};

// What the linear layers of one model share: the precision, the weight caches (made again after
// each optimizer step), operand scratch grown on first use, and time spent quantizing.
class LinearContext {
 public:
  explicit LinearContext(Precision precision) : precision_(precision) {}
  Precision precision() const { return precision_; }
  LinQuant* NewCache();
  void WeightsChanged() { ++version_; }  // before each forward: weights moved since the last
  uint64_t version() const { return version_; }
  double quant_seconds = 0;      // quantization and BF16 conversion, accumulated
  std::vector<uint16_t> qa, qb;  // operand scratch
  std::vector<float> sa, sb;

 private:
  Precision precision_;
  uint64_t version_ = 1;
  std::vector<std::unique_ptr<LinQuant>> caches_;
};

struct Lin {  // W [out, in] and its gradient
  const float* w = nullptr;
  float* g = nullptr;
  int64_t out = 0, in = 0;
  // The products' precision (kF32 without a context) and, for FP8, power-of-two scales for the
  // input tiles (x) or the output-gradient tiles (dy): DeepSeek-V3 section 3.3.4 rounds those
  // scales for the inputs of o_proj and of the MoE up-projections and for the gradient before
  // the MoE down-projections.
  Precision precision = Precision::kF32;
  bool pow2_x = false, pow2_dy = false;
  LinearContext* ctx = nullptr;
  LinQuant* cache = nullptr;
};
struct Norm {  // RMSNorm weight [n] and its gradient
  const float* w = nullptr;
  float* g = nullptr;
  int64_t n = 0;
};

// Throws naming the tensor when absent. With a context, the layer computes in `precision` (the
// context's when nullopt).
Lin GetLin(Params& p, const std::string& name, LinearContext* ctx = nullptr,
           std::optional<Precision> precision = std::nullopt);
Norm GetNorm(Params& p, const std::string& name);

// y [n, out] = x [n, in] W^T; flops counts 2 per multiply-add.
void LinFwd(const Lin& l, const float* x, int64_t n, float* y, double& flops);
// dW += dy^T x; dx = beta * dx + dy W (dx null: no input gradient wanted).
void LinBwd(const Lin& l, const float* x, const float* dy, int64_t n, float* dx, float beta,
            double& flops);

// y = x * rstd * w per row (rows of stride ld in x and y; y may alias x), rstd [rows] kept.
void NormFwd(const Norm& nm, const float* x, int64_t rows, int64_t ld, float eps, float* y,
             float* rstd);
// dx (= or +=) the input gradient; dw += sum over rows of dy * x * rstd. Rows of x, dy and dx
// have strides ldx, ldy and ldd.
void NormBwd(const Norm& nm, const float* x, int64_t ldx, const float* rstd, const float* dy,
             int64_t ldy, int64_t rows, float* dx, int64_t ldd, bool accumulate);

}  // namespace dsv3::train
