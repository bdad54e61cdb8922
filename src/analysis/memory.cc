#include "analysis/memory.h"

#include <algorithm>

#include "core/error.h"
#include "model/model_info.h"

namespace dsv3::analysis {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool ActivatedByEveryToken(const WeightTensor& t, const Arch& a) {
  return t.expert < a.experts_per_token;  // the first K experts stand for the K selected ones
}

}  // namespace

int64_t CheckedMul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) Fail("{}: {} x {} is too large", what, a, b);
  return r;
}

// ---- KV cache ---------------------------------------------------------------------------------

int64_t KvValuesPerTokenPerLayer(const Arch& a) {
  if (a.attention == AttentionKind::kMla) return a.kv_lora_rank + a.qk_rope_head_dim;
  return 2 * a.kv_heads * a.qk_head_dim;
}

int64_t KvCacheBytesPerToken(const Arch& a, int64_t bytes_per_value) {
  // DeepSeek configs go through the engine's own formula, the one `dsv3 info` reports.
  if (a.deepseek) return dsv3::KvBytesPerToken(*a.deepseek, bytes_per_value);
  return a.layers * KvValuesPerTokenPerLayer(a) * bytes_per_value;
}

int64_t MtpKvCacheBytesPerToken(const Arch& a, int64_t bytes_per_value) {
  return a.mtp_modules * KvValuesPerTokenPerLayer(a) * bytes_per_value;
}

int64_t KvCachedTokens(const Arch& a, int64_t context) {
  return a.sliding_window > 0 ? std::min(context, a.sliding_window) : context;
}

int64_t KvCacheBytes(const Arch& a, int64_t bytes_per_value, int64_t context, int64_t batch) {
  const int64_t per_sequence =
      CheckedMul(KvCacheBytesPerToken(a, bytes_per_value), KvCachedTokens(a, context), "KV cache");
  return CheckedMul(per_sequence, batch, "KV cache");
}

const std::vector<std::string>& CacheDtypeNames() {
  static const std::vector<std::string> names = {"f32", "bf16", "fp8"};
  return names;
}

int64_t CacheDtypeBytes(const std::string& name) {
  if (name == "f32") return 4;
  if (name == "bf16") return 2;
  if (name == "fp8") return 1;
  Fail("KV cache dtype '{}' is not known (expected f32, bf16 or fp8)", name);
}

// ---- weights ----------------------------------------------------------------------------------

const std::vector<WeightFormat>& AllWeightFormats() {
  static const std::vector<WeightFormat> all = {WeightFormat::kBf16, WeightFormat::kFp8,
                                                WeightFormat::kInt8, WeightFormat::kInt4};
  return all;
}

const char* WeightFormatName(WeightFormat f) {
  switch (f) {
    case WeightFormat::kBf16:
      return "bf16";
    case WeightFormat::kFp8:
      return "fp8";
    case WeightFormat::kInt8:
      return "int8";
    case WeightFormat::kInt4:
      return "int4";
  }
  return "?";
}

WeightFormat ParseWeightFormat(const std::string& name) {
  for (WeightFormat f : AllWeightFormats()) {
    if (name == WeightFormatName(f)) return f;
  }
  Fail("weight format '{}' is not known (expected bf16, fp8, int8 or int4)", name);
}

WeightFormat StoredWeightFormat(const Arch& a) {
  return a.stored_format == "fp8" ? WeightFormat::kFp8 : WeightFormat::kBf16;
}

std::string DescribeWeightFormat(WeightFormat f, const Arch& a, int64_t group_size) {
  switch (f) {
    case WeightFormat::kBf16:
      return "2 bytes per weight (bf16 or f16)";
    case WeightFormat::kFp8:
      return fmt::format("layer linears 1 byte + a float32 scale per {}x{} block", a.fp8_block_rows,
                         a.fp8_block_cols);
    case WeightFormat::kInt8:
      return fmt::format("layer linears 1 byte + a 16-bit scale per {} weights", group_size);
    case WeightFormat::kInt4:
      return fmt::format("layer linears 4 bits + a 16-bit scale per {} weights", group_size);
  }
  return "?";
}

int64_t TensorBytes(const WeightTensor& t, WeightFormat f, const Arch& a, int64_t group_size) {
  if (t.cls == WeightClass::kF32) return 4 * t.numel();
  if (t.cls == WeightClass::kHalf || f == WeightFormat::kBf16) return 2 * t.numel();
  switch (f) {
    case WeightFormat::kFp8:
      // DeepSeek's layout: `weight_scale_inv` is float32 [ceil(out/128), ceil(in/128)], so
      // partial edge blocks still cost a whole scale.
      return t.numel() + 4 * CeilDiv(t.rows, a.fp8_block_rows) * CeilDiv(t.cols, a.fp8_block_cols);
    case WeightFormat::kInt8:
      return t.numel() + 2 * t.rows * CeilDiv(t.cols, group_size);
    case WeightFormat::kInt4:
      // Two weights per byte along a row; an odd row length leaves half a byte unused.
      return t.rows * CeilDiv(t.cols, 2) + 2 * t.rows * CeilDiv(t.cols, group_size);
    case WeightFormat::kBf16:
      break;
  }
  return 2 * t.numel();
}

WeightBytes CountWeightBytes(const Arch& a, WeightFormat f, int64_t group_size) {
  if (group_size < 1) Fail("--group-size must be at least 1, got {}", group_size);
  WeightBytes b;
  for (const WeightTensor& t : a.tensors) {
    const int64_t bytes = TensorBytes(t, f, a, group_size);
    if (t.mtp_module >= 0) {
      b.mtp += bytes;
      continue;
    }
    b.total += bytes;
    if (t.input_embedding && !a.tie_word_embeddings) {
      b.per_token += 2 * t.cols;  // the token's row of the table
    } else if (ActivatedByEveryToken(t, a)) {
      b.per_token += bytes;
    }
  }
  return b;
}

// ---- MTP --------------------------------------------------------------------------------------

MtpParams CountMtpParams(const Arch& a) {
  MtpParams p;
  for (const WeightTensor& t : a.tensors) {
    if (t.mtp_module < 0) continue;
    const int64_t n = t.numel();
    p.stored += n;
    switch (t.mtp_part) {
      case MtpPart::kBlock:
        p.block += n;
        break;
      case MtpPart::kProjection:
        p.projection += n;
        break;
      case MtpPart::kNorm:
        p.norms += n;
        break;
      case MtpPart::kEmbeddingCopy:
        p.embedding_copy += n;
        break;
      case MtpPart::kHeadCopy:
        p.head_copy += n;
        break;
      case MtpPart::kNone:
        break;
    }
    // A draft token runs module 0: its embedding row is a lookup, its unselected experts idle.
    if (t.mtp_module == 0 && t.mtp_part != MtpPart::kEmbeddingCopy && ActivatedByEveryToken(t, a)) {
      p.activated_per_draft += n;
    }
  }
  return p;
}

}  // namespace dsv3::analysis
