#include "model/synth.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>

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

// Approximately standard normal from one 64-bit hash: the sum of four 16-bit uniforms
// (Irwin-Hall), centred and scaled to unit variance. Cheap enough for 100 GB of weights.
float Normalish(uint64_t h) {
  const double sum =
      static_cast<double>((h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48));
  return static_cast<float>((sum - 2 * 65535.5) * (1.7320508075688772 / 65536.0));
}

// How a tensor's values are drawn: value(i) = mean + std * normal(seed, i).
struct Distribution {
  uint64_t seed;
  float mean, std;
  float At(int64_t i) const {
    return mean + std * Normalish(Mix(seed ^ Mix(static_cast<uint64_t>(i))));
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

// Per FP8 tensor: block scales, computed when the scale tensor is written and reused when the
// codes are (the writer puts F32 tensors first).
class Fp8Blocks {
 public:
  const std::vector<float>& Scales(const std::string& name, const Distribution& d, int64_t rows,
                                   int64_t cols, int64_t br, int64_t bc) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = scales_.find(name);
    if (it != scales_.end()) return it->second;
    const int64_t sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
    std::vector<float> amax(static_cast<size_t>(sr * sc), 0.0f);
    ParallelFor(sr, 1, [&](int64_t b0, int64_t b1, int) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t r = b * br; r < std::min(rows, (b + 1) * br); ++r) {
          for (int64_t c = 0; c < cols; ++c) {
            float& m = amax[b * sc + c / bc];
            m = std::max(m, std::fabs(d.At(r * cols + c)));
          }
        }
      }
    });
    for (float& a : amax) a = a > 0 ? a / 448.0f : 1.0f;  // scale_inv = amax / 448
    return scales_.emplace(name, std::move(amax)).first->second;
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
    if (f == "config.json" || f == "model.safetensors.index.json" ||
        (f.rfind("model", 0) == 0 && e.path().extension() == ".safetensors")) {
      fs::remove(e.path());  // a previous checkpoint here; its shards would confuse the index
    }
  }

  std::vector<TensorSpec> specs = MainTensorSpecs(c);
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    for (TensorSpec& s : MtpTensorSpecs(c, k)) specs.push_back(std::move(s));
  }
  auto blocks = std::make_shared<Fp8Blocks>();
  const int64_t br = 128, bc = 128;

  // One TensorToWrite per stored tensor (FP8 weights also get their scale tensor).
  std::vector<TensorToWrite> all;
  for (const TensorSpec& s : specs) {
    const Distribution d = DistributionFor(s, c, o.seed);
    const bool quantize = fp8 && s.role == TensorRole::kLinear && s.fp8_in_release;
    const int64_t numel = s.shape.size() == 2 ? s.shape[0] * s.shape[1] : s.shape[0];
    if (s.role == TensorRole::kBias) {
      all.push_back({s.name, DType::kF32, s.shape, [d, numel](uint8_t* dst) {
                       float* out = reinterpret_cast<float*>(dst);
                       for (int64_t i = 0; i < numel; ++i) out[i] = d.At(i);
                     }});
    } else if (!quantize) {
      all.push_back({s.name, DType::kBF16, s.shape, [d, numel](uint8_t* dst) {
                       uint16_t* out = reinterpret_cast<uint16_t*>(dst);
                       ParallelFor(numel, 4096, [&](int64_t i0, int64_t i1, int) {
                         for (int64_t i = i0; i < i1; ++i) out[i] = F32ToBF16(d.At(i));
                       });
                     }});
    } else {
      const int64_t rows = s.shape[0], cols = s.shape[1];
      const int64_t sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
      all.push_back(
          {s.name + "_scale_inv", DType::kF32, {sr, sc}, [=, name = s.name](uint8_t* dst) {
             const std::vector<float>& scales = blocks->Scales(name, d, rows, cols, br, bc);
             std::memcpy(dst, scales.data(), scales.size() * sizeof(float));
           }});
      all.push_back({s.name, DType::kF8E4M3, s.shape, [=, name = s.name](uint8_t* dst) {
                       const std::vector<float>& scales =
                           blocks->Scales(name, d, rows, cols, br, bc);
                       ParallelFor(rows, 1, [&](int64_t r0, int64_t r1, int) {
                         for (int64_t r = r0; r < r1; ++r) {
                           for (int64_t col = 0; col < cols; ++col) {
                             const float scale = scales[(r / br) * sc + col / bc];
                             dst[r * cols + col] = F32ToE4M3(d.At(r * cols + col) / scale);
                           }
                         }
                       });
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
  WriteFileAtomic((fs::path(o.out_dir) / "config.json").string(), json.dump(2) + "\n");
  return written;
}

}  // namespace dsv3
