#include "model/weights.h"

#include <cstring>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "model/tensor_specs.h"

namespace dsv3 {
namespace {

class Binder {
 public:
  Binder(const Config& c, const Checkpoint& ckpt) : c_(c), ckpt_(ckpt) {
    for (const TensorSpec& s : MainTensorSpecs(c)) specs_.emplace(s.name, s);
  }

  const TensorInfo& Get(const std::string& name) {
    const auto spec = specs_.find(name);
    const TensorInfo* t = ckpt_.Find(name);
    if (t == nullptr) {
      Fail("{}: tensor '{}' is missing (required by config.json)", ckpt_.dir(), name);
    }
    if (spec != specs_.end() && t->shape != spec->second.shape) {
      TensorInfo expected;
      expected.shape = spec->second.shape;
      Fail("{}: tensor '{}' has shape {}, expected {} from config.json", *t->file, name,
           t->ShapeString(), expected.ShapeString());
    }
    used_.insert(name);
    bytes_ += t->nbytes;
    return *t;
  }

  WeightMatrix Linear(const std::string& name) {
    const TensorInfo& t = Get(name);
    WeightMatrix w;
    w.dtype = t.dtype;
    w.rows = t.shape.at(0);
    w.cols = t.shape.at(1);
    w.data = t.data;
    switch (t.dtype) {
      case DType::kF32:
      case DType::kBF16:
      case DType::kF16:
        break;
      case DType::kF8E4M3: {
        if (c_.quant_block_rows == 0) {
          Fail(
              "{}: tensor '{}' is F8_E4M3 but config.json has no quantization_config with "
              "weight_block_size",
              *t.file, name);
        }
        const std::string scale_name = name + "_scale_inv";
        if (ckpt_.Find(scale_name) == nullptr) {
          Fail("{}: FP8 tensor '{}' needs its block scales '{}', which are missing", *t.file, name,
               scale_name);
        }
        const TensorInfo& s = Get(scale_name);
        w.block_rows = c_.quant_block_rows;
        w.block_cols = c_.quant_block_cols;
        w.scale_cols = (w.cols + w.block_cols - 1) / w.block_cols;
        const std::vector<int64_t> expected = {(w.rows + w.block_rows - 1) / w.block_rows,
                                               w.scale_cols};
        if (s.dtype != DType::kF32 || s.shape != expected) {
          Fail(
              "{}: tensor '{}' is {} {}, expected F32 [{}, {}] (one scale per {}x{} block of '{}')",
              *s.file, scale_name, DTypeName(s.dtype), s.ShapeString(), expected[0], expected[1],
              w.block_rows, w.block_cols, name);
        }
        w.scale = reinterpret_cast<const float*>(s.data);
        break;
      }
      default:
        Fail("{}: tensor '{}' has dtype {}; a linear weight must be F32, BF16, F16 or F8_E4M3",
             *t.file, name, DTypeName(t.dtype));
    }
    return w;
  }

  WeightMatrix Embedding(const std::string& name) {
    const TensorInfo& t = Get(name);
    if (t.dtype != DType::kF32 && t.dtype != DType::kBF16 && t.dtype != DType::kF16) {
      Fail("{}: tensor '{}' has dtype {}; an embedding must be F32, BF16 or F16", *t.file, name,
           DTypeName(t.dtype));
    }
    WeightMatrix w;
    w.dtype = t.dtype;
    w.rows = t.shape.at(0);
    w.cols = t.shape.at(1);
    w.data = t.data;
    return w;
  }

  std::vector<float> Vector(const std::string& name) {
    const TensorInfo& t = Get(name);
    std::vector<float> v(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < v.size(); ++i) {
      switch (t.dtype) {
        case DType::kF32:
          std::memcpy(&v[i], t.data + 4 * i, 4);
          break;
        case DType::kBF16:
          v[i] = BF16ToF32(reinterpret_cast<const uint16_t*>(t.data)[i]);
          break;
        case DType::kF16:
          v[i] = F16ToF32(reinterpret_cast<const uint16_t*>(t.data)[i]);
          break;
        default:
          Fail("{}: tensor '{}' has dtype {}; expected F32, BF16 or F16", *t.file, name,
               DTypeName(t.dtype));
      }
    }
    return v;
  }

  MlpWeights Mlp(const std::string& p) {
    return {Linear(p + "gate_proj.weight"), Linear(p + "up_proj.weight"),
            Linear(p + "down_proj.weight")};
  }

  void Report(LoadReport* report) const {
    if (report == nullptr) return;
    report->main_bytes = bytes_;
    const std::string mtp_prefix = LayerPrefix(c_.num_hidden_layers);
    for (const TensorInfo* t : ckpt_.tensors()) {
      if (used_.count(t->name)) continue;
      if (IsMtpTensor(t->name)) {
        ++report->mtp_tensors;
        report->mtp_bytes += t->nbytes;
      } else {
        report->unused.push_back(t->name);
      }
    }
  }

 private:
  bool IsMtpTensor(const std::string& name) const {
    for (int64_t k = 0; k < c_.num_nextn_predict_layers; ++k) {
      if (name.rfind(LayerPrefix(c_.num_hidden_layers + k), 0) == 0) return true;
    }
    return false;
  }

  const Config& c_;
  const Checkpoint& ckpt_;
  std::unordered_map<std::string, TensorSpec> specs_;
  std::set<std::string> used_;
  uint64_t bytes_ = 0;
};

}  // namespace

Weights BindWeights(const Config& c, const Checkpoint& ckpt, LoadReport* report) {
  Binder b(c, ckpt);
  Weights w;
  w.embed = b.Embedding("model.embed_tokens.weight");
  w.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    const std::string p = LayerPrefix(l);
    lw.attn_norm = b.Vector(p + "input_layernorm.weight");
    lw.ffn_norm = b.Vector(p + "post_attention_layernorm.weight");
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank > 0) {
      lw.attn.q_a = b.Linear(a + "q_a_proj.weight");
      lw.attn.q_a_norm = b.Vector(a + "q_a_layernorm.weight");
      lw.attn.q_b = b.Linear(a + "q_b_proj.weight");
    } else {
      lw.attn.q = b.Linear(a + "q_proj.weight");
    }
    lw.attn.kv_a = b.Linear(a + "kv_a_proj_with_mqa.weight");
    lw.attn.kv_a_norm = b.Vector(a + "kv_a_layernorm.weight");
    lw.attn.kv_b = b.Linear(a + "kv_b_proj.weight");
    lw.attn.o = b.Linear(a + "o_proj.weight");
    lw.is_moe = c.IsMoeLayer(l);
    if (!lw.is_moe) {
      lw.mlp = b.Mlp(p + "mlp.");
      continue;
    }
    lw.moe.router = b.Linear(p + "mlp.gate.weight");
    if (c.topk_method == TopkMethod::kNoauxTc) {
      lw.moe.correction_bias = b.Vector(p + "mlp.gate.e_score_correction_bias");
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      lw.moe.experts.push_back(b.Mlp(p + "mlp.experts." + std::to_string(e) + "."));
    }
    if (c.n_shared_experts > 0) lw.moe.shared = b.Mlp(p + "mlp.shared_experts.");
  }
  w.final_norm = b.Vector("model.norm.weight");
  w.lm_head = c.tie_word_embeddings ? w.embed : b.Linear("lm_head.weight");
  b.Report(report);
  return w;
}

}  // namespace dsv3
