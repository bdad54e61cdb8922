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
  Binder(const Config& c, const Checkpoint& ckpt, const ExpertFilter& holds)
      : c_(c), ckpt_(ckpt), holds_(holds) {
    for (const TensorSpec& s : MainTensorSpecs(c)) specs_.emplace(s.name, s);
    for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
      for (const TensorSpec& s : MtpTensorSpecs(c, k)) specs_.emplace(s.name, s);
    }
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

  // Decoder layer l: the main stack's, or an MTP module's at l >= num_hidden_layers.
  LayerWeights Layer(int64_t l) {
    LayerWeights lw;
    const std::string p = LayerPrefix(l);
    lw.attn_norm = Vector(p + "input_layernorm.weight");
    lw.ffn_norm = Vector(p + "post_attention_layernorm.weight");
    const std::string a = p + "self_attn.";
    if (c_.q_lora_rank > 0) {
      lw.attn.q_a = Linear(a + "q_a_proj.weight");
      lw.attn.q_a_norm = Vector(a + "q_a_layernorm.weight");
      lw.attn.q_b = Linear(a + "q_b_proj.weight");
    } else {
      lw.attn.q = Linear(a + "q_proj.weight");
    }
    lw.attn.kv_a = Linear(a + "kv_a_proj_with_mqa.weight");
    lw.attn.kv_a_norm = Vector(a + "kv_a_layernorm.weight");
    lw.attn.kv_b = Linear(a + "kv_b_proj.weight");
    lw.attn.o = Linear(a + "o_proj.weight");
    lw.is_moe = c_.IsMoeLayer(l);
    if (!lw.is_moe) {
      lw.mlp = Mlp(p + "mlp.");
      return lw;
    }
    lw.moe.router = Linear(p + "mlp.gate.weight");
    if (c_.topk_method == TopkMethod::kNoauxTc) {
      lw.moe.correction_bias = Vector(p + "mlp.gate.e_score_correction_bias");
    }
    for (int64_t e = 0; e < c_.n_routed_experts; ++e) {
      const std::string ep = p + "mlp.experts." + std::to_string(e) + ".";
      MlpWeights m = Mlp(ep);  // validated on every rank, bound only where held
      if (!holds_ || holds_(e)) {
        lw.moe.experts.push_back(m);
        continue;
      }
      lw.moe.experts.emplace_back();
      for (const char* proj : {"gate_proj.", "up_proj.", "down_proj."}) {
        elsewhere_.insert(ep + proj + "weight");
        elsewhere_.insert(ep + proj + "weight_scale_inv");
      }
    }
    if (c_.n_shared_experts > 0) lw.moe.shared = Mlp(p + "mlp.shared_experts.");
    return lw;
  }

  // MTP module k, reusing the main embedding / lm_head where the stored copies are identical.
  MtpWeights Mtp(int64_t k, const Weights& main) {
    const std::string p = LayerPrefix(c_.num_hidden_layers + k);
    MtpWeights m;
    m.embed = Embedding(p + "embed_tokens.weight");
    m.enorm = Vector(p + "enorm.weight");
    m.hnorm = Vector(p + "hnorm.weight");
    m.eh_proj = Linear(p + "eh_proj.weight");
    m.layer = Layer(c_.num_hidden_layers + k);
    m.head_norm = Vector(p + "shared_head.norm.weight");
    m.head = Linear(p + "shared_head.head.weight");
    m.shares_embed = SameBytes(m.embed, main.embed);
    if (m.shares_embed) m.embed = main.embed;
    m.shares_head = SameBytes(m.head, main.lm_head);
    if (m.shares_head) m.head = main.lm_head;
    return m;
  }

  bool Has(const std::string& name) const { return ckpt_.Find(name) != nullptr; }

  static bool SameBytes(const WeightMatrix& a, const WeightMatrix& b) {
    return a.dtype == b.dtype && a.rows == b.rows && a.cols == b.cols && a.scale == nullptr &&
           b.scale == nullptr && std::memcmp(a.data, b.data, a.bytes()) == 0;
  }

  // Bytes per part, and the tensors nothing reads (MTP tensors count as read when the MTP
  // modules are not bound: they are accepted for whoever loads them).
  void Report(LoadReport* report, bool mtp_bound) const {
    if (report == nullptr) return;
    for (const TensorInfo* t : ckpt_.tensors()) {
      const bool used = used_.count(t->name) > 0, mtp = IsMtpTensor(t->name);
      if (elsewhere_.count(t->name) > 0) {
        report->elsewhere_bytes += t->nbytes;
      } else if (mtp) {
        ++report->mtp_tensors;
        report->mtp_bytes += t->nbytes;
      } else if (used) {
        report->main_bytes += t->nbytes;
      }
      if (!used && (!mtp || mtp_bound)) report->unused.push_back(t->name);
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
  const ExpertFilter& holds_;
  std::set<std::string> used_;
  std::set<std::string> elsewhere_;  // routed-expert tensors another process holds
};

}  // namespace

Weights BindWeights(const Config& c, const Checkpoint& ckpt, LoadReport* report,
                    std::vector<MtpWeights>* mtp, const ExpertFilter& holds) {
  Binder b(c, ckpt, holds);
  Weights w;
  w.embed = b.Embedding("model.embed_tokens.weight");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) w.layers.push_back(b.Layer(l));
  w.final_norm = b.Vector("model.norm.weight");
  w.lm_head = c.tie_word_embeddings ? w.embed : b.Linear("lm_head.weight");
  // MTP modules: bound when their projection is stored (some conversions drop them all).
  for (int64_t k = 0; k < c.num_nextn_predict_layers && mtp != nullptr; ++k) {
    if (!b.Has(LayerPrefix(c.num_hidden_layers + k) + "eh_proj.weight")) break;
    mtp->push_back(b.Mtp(k, w));
  }
  const bool mtp_bound = mtp != nullptr && !mtp->empty();
  b.Report(report, mtp_bound);
  if (report != nullptr) report->mtp_layers = mtp_bound ? static_cast<int64_t>(mtp->size()) : 0;
  return w;
}

}  // namespace dsv3
