#include "model/synth.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "core/error.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "io/safetensors_writer.h"
#include "model/config.h"
#include "model/tensor_specs.h"

namespace dsv3 {
namespace fs = std::filesystem;
namespace {

// The DeepSeek-V3-style test model shape (as ../shared/testdata/models/v3-tiny).
const char* kTinyConfig = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 1024, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
  "num_hidden_layers": 3, "first_k_dense_replace": 1, "moe_layer_freq": 1,
  "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 96, "kv_lora_rank": 64,
  "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
  "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4,
  "topk_group": 2, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
  "routed_scaling_factor": 2.5, "max_position_embeddings": 5120, "rms_norm_eps": 1e-06,
  "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40,
  "original_max_position_embeddings": 128, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
  "mscale_all_dim": 1.0}, "num_nextn_predict_layers": 1, "tie_word_embeddings": false,
  "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"})";

// deepseek-ai/DeepSeek-V2-Lite.
const char* kV2LiteConfig = R"({
  "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
  "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
  "moe_intermediate_size": 1408, "num_hidden_layers": 27, "first_k_dense_replace": 1,
  "moe_layer_freq": 1, "num_attention_heads": 16, "num_key_value_heads": 16,
  "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "n_group": 1,
  "topk_group": 1, "topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": false,
  "routed_scaling_factor": 1.0, "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64, "v_head_dim": 128, "max_position_embeddings": 163840,
  "rms_norm_eps": 1e-06, "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40,
  "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
  "mscale_all_dim": 0.707}, "tie_word_embeddings": false, "hidden_act": "silu",
  "bos_token_id": 100000, "eos_token_id": 100001, "torch_dtype": "bfloat16"})";

// deepseek-ai/DeepSeek-V3.
const char* kV3Config = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
  "moe_intermediate_size": 2048, "num_hidden_layers": 61, "first_k_dense_replace": 3,
  "moe_layer_freq": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
  "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8,
  "topk_group": 4, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
  "routed_scaling_factor": 2.5, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64, "v_head_dim": 128, "max_position_embeddings": 163840,
  "rms_norm_eps": 1e-06, "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40,
  "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
  "mscale_all_dim": 1.0}, "num_nextn_predict_layers": 1, "tie_word_embeddings": false,
  "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16"})";

uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t HashName(const std::string& s) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001B3ull;
  return h;
}

// Random values of one tensor row: a wyrand stream seeded by (tensor, row), so rows can be made in
// parallel and in any order with the same result. Each 64-bit draw gives an approximately
// standard normal value: the sum of its four 16-bit parts (Irwin-Hall), centred and scaled to
// unit variance. Cheap enough for 100 GB of weights.
class RowRandom {
 public:
  RowRandom(uint64_t seed, int64_t row) : state_(Mix(seed ^ Mix(static_cast<uint64_t>(row)))) {}
  float Normal() {
    state_ += 0xA0761D6478BD642Full;
    const __uint128_t t = static_cast<__uint128_t>(state_) * (state_ ^ 0xE7037ED1A0B428DBull);
    const uint64_t h = static_cast<uint64_t>(t >> 64) ^ static_cast<uint64_t>(t);
    const int64_t sum = static_cast<int64_t>((h & 0xFFFF) + ((h >> 16) & 0xFFFF) +
                                             ((h >> 32) & 0xFFFF) + (h >> 48));
    return static_cast<float>(2 * sum - 4 * 65535) * (0.8660254037844386f / 65536.0f);
  }

 private:
  uint64_t state_;
};

// How a tensor's values are drawn: row r, column c = mean + std * RowRandom(seed, r) draw c.
struct Distribution {
  uint64_t seed;
  float mean, std;
  // Fills out[0, cols) with row r.
  void Row(int64_t r, int64_t cols, float* out) const {
    RowRandom rng(seed, r);
    for (int64_t c = 0; c < cols; ++c) out[c] = mean + std * rng.Normal();
  }
};

Distribution DistributionFor(const TensorSpec& s, const Config& c, uint64_t seed) {
  // MTP layers store copies of the embedding and lm_head: draw them from the same stream.
  std::string key = s.name;
  if (key.rfind("model.layers.", 0) == 0 && key.find(".embed_tokens.weight") != std::string::npos)
    key = "model.embed_tokens.weight";
  if (key.find(".shared_head.head.weight") != std::string::npos) key = "lm_head.weight";
  const uint64_t stream = Mix(seed ^ HashName(key));
  switch (s.role) {
    case TensorRole::kEmbedding:
      return {stream, 0, 1};
    case TensorRole::kNorm:
      return {stream, 1, 0.1f};
    case TensorRole::kBias:
      return {stream, 0, 0.1f};
    case TensorRole::kLinear: {
      const float fan_in = static_cast<float>(s.shape[1]);
      const bool head = key == "lm_head.weight";
      return {stream, 0, (head ? 2.0f : 1.0f) / std::sqrt(fan_in)};
    }
  }
  return {stream, 0, 1};
}

void SetDotted(Json& j, const std::string& key, const Json& value) {
  Json* node = &j;
  size_t start = 0;
  for (size_t dot; (dot = key.find('.', start)) != std::string::npos; start = dot + 1) {
    Json& child = (*node)[key.substr(start, dot - start)];
    if (!child.is_object()) child = Json::object();
    node = &child;
  }
  (*node)[key.substr(start)] = value;
}

constexpr int64_t kBlock = 128;  // FP8 block size of DeepSeek's releases

void FillBf16(const Distribution& d, int64_t rows, int64_t cols, uint8_t* dst) {
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  ParallelFor(rows, 1, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> row(cols);
    for (int64_t r = r0; r < r1; ++r) {
      d.Row(r, cols, row.data());
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = F32ToBF16(row[c]);
    }
  });
}

// scale_inv = amax / 448 per kBlock x kBlock block.
std::vector<float> BlockScales(const Distribution& d, int64_t rows, int64_t cols) {
  const int64_t sr = (rows + kBlock - 1) / kBlock, sc = (cols + kBlock - 1) / kBlock;
  std::vector<float> amax(static_cast<size_t>(sr * sc), 0.0f);
  ParallelFor(sr, 1, [&](int64_t b0, int64_t b1, int) {
    std::vector<float> row(cols);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t r = b * kBlock; r < std::min(rows, (b + 1) * kBlock); ++r) {
        d.Row(r, cols, row.data());
        for (int64_t c = 0; c < cols; ++c) {
          float& m = amax[b * sc + c / kBlock];
          m = std::max(m, std::fabs(row[c]));
        }
      }
    }
  });
  for (float& a : amax) a = a > 0 ? a / 448.0f : 1.0f;
  return amax;
}

void FillFp8(const Distribution& d, int64_t rows, int64_t cols, const std::vector<float>& scales,
             uint8_t* dst) {
  const int64_t sc = (cols + kBlock - 1) / kBlock;
  ParallelFor(rows, 1, [&](int64_t r0, int64_t r1, int) {
    std::vector<float> row(cols);
    for (int64_t r = r0; r < r1; ++r) {
      d.Row(r, cols, row.data());
      const float* scale = &scales[(r / kBlock) * sc];
      for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = F32ToE4M3(row[c] / scale[c / kBlock]);
    }
  });
}

// Block scales of each FP8 tensor, computed when the scale tensor is written and reused when the
// codes are (the writer puts F32 tensors first).
class Fp8Blocks {
 public:
  const std::vector<float>& Scales(const std::string& name, const Distribution& d, int64_t rows,
                                   int64_t cols) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = scales_.find(name);
    if (it == scales_.end()) it = scales_.emplace(name, BlockScales(d, rows, cols)).first;
    return it->second;
  }
  void Forget(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    scales_.erase(name);
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::vector<float>> scales_;
};

}  // namespace

Json PresetConfig(const std::string& preset) {
  if (preset == "tiny") return Json::parse(kTinyConfig);
  if (preset == "v2-lite") return Json::parse(kV2LiteConfig);
  if (preset == "v3") return Json::parse(kV3Config);
  Fail("unknown preset '{}'; choose tiny, v2-lite or v3", preset);
}

Json SynthConfig(const SynthOptions& o) {
  Json j = PresetConfig(o.preset);
  if (o.dtype == "fp8") {
    j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {128, 128}}};
  } else if (o.dtype == "bf16") {
    j.erase("quantization_config");
  } else {
    Fail("unknown --dtype '{}'; choose bf16 or fp8", o.dtype);
  }
  for (const std::string& kv : o.set) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) Fail("--set '{}': expected key=value", kv);
    const std::string key = kv.substr(0, eq), text = kv.substr(eq + 1);
    Json value = Json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) value = text;
    SetDotted(j, key, value);
  }
  Config::FromJson(j, "synth config (preset " + o.preset + " with --set)");  // validates
  return j;
}

uint64_t Synthesize(const SynthOptions& o) {
  if (o.out_dir.empty()) Fail("synth: an output folder is required (-o DIR)");
  const Json json = SynthConfig(o);
  const Config c = Config::FromJson(json, "synth config");
  const bool fp8 = o.dtype == "fp8";

  fs::create_directories(o.out_dir);
  for (const auto& e : fs::directory_iterator(o.out_dir)) {
    const std::string f = e.path().filename().string();
    if (f == "config.json" || f == "model.safetensors.index.json" || f == "tokenizer.json" ||
        f == "tokenizer_config.json" ||
        (f.rfind("model", 0) == 0 && e.path().extension() == ".safetensors")) {
      fs::remove(e.path());  // a previous checkpoint here; its files would not match this one
    }
  }

  std::vector<TensorSpec> specs = MainTensorSpecs(c);
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    for (TensorSpec& s : MtpTensorSpecs(c, k)) specs.push_back(std::move(s));
  }
  auto blocks = std::make_shared<Fp8Blocks>();

  // One TensorToWrite per stored tensor (FP8 weights also get their scale tensor).
  std::vector<TensorToWrite> all;
  for (const TensorSpec& s : specs) {
    const Distribution d = DistributionFor(s, c, o.seed);
    const int64_t rows = s.shape.size() == 2 ? s.shape[0] : 1;
    const int64_t cols = s.shape.size() == 2 ? s.shape[1] : s.shape[0];
    if (s.role == TensorRole::kBias) {
      all.push_back({s.name, DType::kF32, s.shape,
                     [=](uint8_t* dst) { d.Row(0, cols, reinterpret_cast<float*>(dst)); }});
    } else if (!(fp8 && s.role == TensorRole::kLinear && s.fp8_in_release)) {
      all.push_back(
          {s.name, DType::kBF16, s.shape, [=](uint8_t* dst) { FillBf16(d, rows, cols, dst); }});
    } else {
      const int64_t sr = (rows + kBlock - 1) / kBlock, sc = (cols + kBlock - 1) / kBlock;
      all.push_back(
          {s.name + "_scale_inv", DType::kF32, {sr, sc}, [=, name = s.name](uint8_t* dst) {
             const std::vector<float>& scales = blocks->Scales(name, d, rows, cols);
             std::memcpy(dst, scales.data(), scales.size() * sizeof(float));
           }});
      all.push_back({s.name, DType::kF8E4M3, s.shape, [=, name = s.name](uint8_t* dst) {
                       FillFp8(d, rows, cols, blocks->Scales(name, d, rows, cols), dst);
                       blocks->Forget(name);
                     }});
    }
  }

  // Shards of about shard_bytes, in spec order (a weight and its scales stay together).
  std::vector<std::vector<TensorToWrite>> shards(1);
  uint64_t current = 0, total = 0;
  for (TensorToWrite& t : all) {
    if (current > 0 && current + t.nbytes() > o.shard_bytes && !t.name.ends_with("_scale_inv")) {
      shards.emplace_back();
      current = 0;
    }
    current += t.nbytes();
    total += t.nbytes();
    shards.back().push_back(std::move(t));
  }
  Progress progress("synth " + o.out_dir, total, o.progress);
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  uint64_t written = 0;
  if (shards.size() == 1) {
    written += WriteSafetensors((fs::path(o.out_dir) / "model.safetensors").string(),
                                std::move(shards[0]), metadata, &progress);
  } else {
    nlohmann::ordered_json weight_map;
    std::map<std::string, std::string> sorted;
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string file =
          fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
      for (const TensorToWrite& t : shards[i]) sorted[t.name] = file;
      written += WriteSafetensors((fs::path(o.out_dir) / file).string(), std::move(shards[i]),
                                  metadata, &progress);
    }
    for (const auto& [name, file] : sorted) weight_map[name] = file;
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = weight_map;
    WriteFileAtomic((fs::path(o.out_dir) / "model.safetensors.index.json").string(), index.dump(2));
  }
  progress.Finish();
  for (const std::string& file : o.copy_files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) Fail("{}: cannot open", file);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    WriteFileAtomic((fs::path(o.out_dir) / fs::path(file).filename()).string(), bytes.str());
  }
  WriteFileAtomic((fs::path(o.out_dir) / "config.json").string(), json.dump(2) + "\n");
  return written;
}

}  // namespace dsv3
