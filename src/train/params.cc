#include "train/params.h"

#include <cmath>
#include <cstring>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/tensor_specs.h"
#include "model/weights.h"

namespace dsv3::train {

Params::Params(const Config& c) : config_(c) {
  std::vector<TensorSpec> specs = MainTensorSpecs(c);
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string p = LayerPrefix(c.num_hidden_layers + k);
    tied_[p + "embed_tokens.weight"] = "model.embed_tokens.weight";
    tied_[p + "shared_head.head.weight"] =
        c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    for (TensorSpec& s : MtpTensorSpecs(c, k)) specs.push_back(std::move(s));
  }
  int64_t offset = 0;
  for (const TensorSpec& s : specs) {
    if (tied_.count(s.name)) continue;
    if (s.role == TensorRole::kBias) {
      biases_[s.name].assign(static_cast<size_t>(s.shape[0]), 0.0f);
      continue;
    }
    ParamInfo p;
    p.name = s.name;
    p.shape = s.shape;
    p.numel = 1;
    for (int64_t d : s.shape) p.numel *= d;
    p.offset = offset;
    p.weight_decay = s.shape.size() == 2;
    p.fp8_in_release = s.fp8_in_release;
    offset += PadFloats(p.numel);
    total_ += p.numel;
    index_[p.name] = list_.size();
    list_.push_back(std::move(p));
  }
  values_.Resize(static_cast<size_t>(offset));
  grads_.Resize(static_cast<size_t>(offset));
}

const ParamInfo* Params::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &list_[it->second];
}

float* Params::value(const std::string& name) {
  const ParamInfo* p = Find(name);
  if (p == nullptr) Fail("trainer: no parameter '{}' in this config", name);
  return values_.data() + p->offset;
}

float* Params::grad(const std::string& name) {
  const ParamInfo* p = Find(name);
  if (p == nullptr) Fail("trainer: no parameter '{}' in this config", name);
  return grads_.data() + p->offset;
}

std::vector<float>* Params::bias(const std::string& name) {
  auto it = biases_.find(name);
  return it == biases_.end() ? nullptr : &it->second;
}

void Params::ZeroGrads() { std::memset(grads_.data(), 0, grads_.size() * sizeof(float)); }

std::vector<float> ReadTensorF32(const Checkpoint& ckpt, const std::string& name,
                                 int64_t block_rows, int64_t block_cols) {
  const TensorInfo* t = ckpt.Find(name);
  if (t == nullptr) Fail("{}: tensor '{}' is missing", ckpt.dir(), name);
  const int64_t n = t->numel();
  std::vector<float> out(static_cast<size_t>(n));
  switch (t->dtype) {
    case DType::kF32:
      std::memcpy(out.data(), t->data, n * sizeof(float));
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i)
        out[i] = BF16ToF32(reinterpret_cast<const uint16_t*>(t->data)[i]);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i)
        out[i] = F16ToF32(reinterpret_cast<const uint16_t*>(t->data)[i]);
      break;
    case DType::kF8E4M3: {
      const TensorInfo* s = ckpt.Find(name + "_scale_inv");
      if (s == nullptr || s->dtype != DType::kF32 || t->shape.size() != 2 || s->shape.size() != 2)
        Fail("{}: FP8 tensor '{}' needs F32 block scales '{}_scale_inv'", *t->file, name, name);
      const int64_t rows = t->shape[0], cols = t->shape[1];
      const int64_t sr = s->shape[0], sc = s->shape[1];
      const int64_t br = block_rows, bc = block_cols;
      if (br <= 0 || bc <= 0 || (rows + br - 1) / br != sr || (cols + bc - 1) / bc != sc)
        Fail(
            "{}: tensor '{}_scale_inv' is [{}, {}], expected one scale per {}x{} block of [{}, {}]",
            *s->file, name, sr, sc, br, bc, rows, cols);
      const float* scale = reinterpret_cast<const float*>(s->data);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          out[r * cols + c] = E4M3ToF32(t->data[r * cols + c]) * scale[(r / br) * sc + c / bc];
      break;
    }
    default:
      Fail("{}: tensor '{}' has dtype {}; the trainer reads F32, BF16, F16 or F8_E4M3", *t->file,
           name, DTypeName(t->dtype));
  }
  return out;
}

void Params::Load(const Checkpoint& ckpt) {
  // Full validation first (presence, dtypes, shapes, FP8 scales), with the engine's own errors.
  LoadReport report;
  std::vector<MtpWeights> mtp;
  BindWeights(config_, ckpt, &report, &mtp);
  if (report.mtp_layers != config_.num_nextn_predict_layers) {
    Fail("{}: config.json has num_nextn_predict_layers {} but the checkpoint holds {} MTP layers",
         ckpt.dir(), config_.num_nextn_predict_layers, report.mtp_layers);
  }
  for (const ParamInfo& p : list_) {
    const std::vector<float> v =
        ReadTensorF32(ckpt, p.name, config_.quant_block_rows, config_.quant_block_cols);
    std::memcpy(values_.data() + p.offset, v.data(), p.numel * sizeof(float));
  }
  for (auto& [name, b] : biases_) b = ReadTensorF32(ckpt, name, 0, 0);
  for (const auto& [copy, main] : tied_) {
    const std::vector<float> v =
        ReadTensorF32(ckpt, copy, config_.quant_block_rows, config_.quant_block_cols);
    const ParamInfo& p = *Find(main);
    if (std::memcmp(v.data(), values_.data() + p.offset, p.numel * sizeof(float)) != 0) {
      Fail(
          "{}: tensor '{}' differs from '{}'; the trainer ties them (DeepSeek-V3 shares the "
          "embedding and output head with the MTP module)",
          ckpt.dir(), copy, main);
    }
  }
}

void Params::Init(double std, uint64_t seed) {
  for (size_t i = 0; i < list_.size(); ++i) {
    const ParamInfo& p = list_[i];
    float* v = values_.data() + p.offset;
    if (p.shape.size() == 1) {
      std::fill(v, v + p.numel, 1.0f);
      continue;
    }
    // One generator per tensor, seeded from the run's seed and the tensor's position.
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + i);
    std::normal_distribution<double> normal(0.0, std);
    for (int64_t j = 0; j < p.numel; ++j) v[j] = static_cast<float>(normal(rng));
  }
  for (auto& [name, b] : biases_) std::fill(b.begin(), b.end(), 0.0f);
}

}  // namespace dsv3::train
