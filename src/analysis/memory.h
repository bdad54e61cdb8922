// Memory figures of an architecture: KV cache per token and at a context length, weight bytes per
// storage format, and the MTP modules' parameters by part.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "analysis/arch.h"

namespace dsv3::analysis {

// ---- KV cache ---------------------------------------------------------------------------------

// Values cached per token per layer: MLA C + R (the latent and the shared RoPE key); GQA
// 2 * kv_heads * head_dim (K and V of every KV head).
int64_t KvValuesPerTokenPerLayer(const Arch& a);
// Bytes per token of the main model's cache: layers * values * bytes_per_value.
int64_t KvCacheBytesPerToken(const Arch& a, int64_t bytes_per_value);
// The MTP modules' own latent caches (0 without MTP).
int64_t MtpKvCacheBytesPerToken(const Arch& a, int64_t bytes_per_value);
// Tokens held per sequence at `context`: all of them, or the sliding window.
int64_t KvCachedTokens(const Arch& a, int64_t context);
// Bytes for `batch` sequences of `context` tokens; fails on int64 overflow.
int64_t KvCacheBytes(const Arch& a, int64_t bytes_per_value, int64_t context, int64_t batch);

// Cache dtypes by name: f32 (this engine's cache), bf16, fp8 (one byte, scales not counted).
int64_t CacheDtypeBytes(const std::string& name);  // fails on an unknown name
const std::vector<std::string>& CacheDtypeNames();

// ---- weights ----------------------------------------------------------------------------------

// Storage formats. Only the decoder layers' linear weights (WeightClass::kQuantizable) change;
// embedding, lm_head, router, norms and biases stay 16-bit, the routing bias float32.
enum class WeightFormat {
  kBf16,  // 2 bytes per weight
  kFp8,   // 1 byte + one float32 scale per block (quantization_config's block, else 128x128)
  kInt8,  // 1 byte + one 16-bit scale per group of `group_size` weights along a row
  kInt4,  // half a byte + one 16-bit scale per group of `group_size` weights along a row
};
const std::vector<WeightFormat>& AllWeightFormats();
const char* WeightFormatName(WeightFormat f);
WeightFormat ParseWeightFormat(const std::string& name);  // fails on an unknown name
// The arch's checkpoint format: kFp8 for a block-quantized config, else kBf16.
WeightFormat StoredWeightFormat(const Arch& a);
std::string DescribeWeightFormat(WeightFormat f, const Arch& a, int64_t group_size);

int64_t TensorBytes(const WeightTensor& t, WeightFormat f, const Arch& a, int64_t group_size);

struct WeightBytes {
  int64_t total = 0;      // main model (embedding and lm_head included), as stored
  int64_t per_token = 0;  // read to decode one token: activated weights + one embedding row
  int64_t mtp = 0;        // all MTP modules, as stored
};
WeightBytes CountWeightBytes(const Arch& a, WeightFormat f, int64_t group_size);

// ---- MTP --------------------------------------------------------------------------------------

// Parameters of the MTP modules (all of them), split by part, and what one draft token activates.
struct MtpParams {
  int64_t stored = 0;               // everything under model.layers.{L + k}
  int64_t block = 0;                // the decoder layer (attention + MoE + its norms)
  int64_t projection = 0;           // eh_proj
  int64_t norms = 0;                // enorm, hnorm, shared_head.norm
  int64_t embedding_copy = 0;       // copies of the main embedding
  int64_t head_copy = 0;            // copies of lm_head
  int64_t activated_per_draft = 0;  // one module, selected experts only, embedding excluded
};
MtpParams CountMtpParams(const Arch& a);

// a * b, failing with a message naming `what` on int64 overflow.
int64_t CheckedMul(int64_t a, int64_t b, const char* what);

}  // namespace dsv3::analysis
