// Checkpoint export and the training state. A checkpoint is written into a sibling folder
// `<dir>.tmp` and swapped in with one atomic rename (renameat2 RENAME_EXCHANGE where the file
// system has it), so at every moment `dir` holds either the complete old or the complete new
// checkpoint. The state is one safetensors file written through `<path>.tmp` and a rename.
#include "train/checkpoint.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <system_error>
#include <utility>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"

namespace dsv3::train {
namespace fs = std::filesystem;
namespace {

// The block of DeepSeek's FP8 releases (quantization_config.weight_block_size).
constexpr int64_t kFp8Block = 128;
constexpr float kE4M3Max = 448.0f;

// The metadata key that marks a training state, and the tensor name prefixes.
constexpr const char* kStateKey = "dsv3_train_state";
constexpr const char* kParam = "param/";
constexpr const char* kAdamM = "adam_m/";
constexpr const char* kAdamV = "adam_v/";
constexpr const char* kBias = "bias/";

// Per kFp8Block x kFp8Block block of the [rows, cols] tensor x: scale = amax / 448 (1 for an
// all-zero block), so that the block's largest magnitude maps to E4M3's largest finite value.
// Row-major [ceil(rows / 128), ceil(cols / 128)]; this is what `_scale_inv` stores, since readers
// compute value = code * scale_inv.
std::vector<float> Fp8BlockScales(const float* x, int64_t rows, int64_t cols,
                                  const std::string& name) {
  const int64_t sr = (rows + kFp8Block - 1) / kFp8Block, sc = (cols + kFp8Block - 1) / kFp8Block;
  std::vector<float> scales(static_cast<size_t>(sr * sc), 0.0f);
  // First non-finite element of each block row (-1: none); reported after the parallel region,
  // since a worker thread must not throw.
  std::vector<int64_t> bad(static_cast<size_t>(sr), -1);
  ParallelFor(sr, 1, [&](int64_t b0, int64_t b1, int) {
    for (int64_t b = b0; b < b1; ++b) {
      float* amax = &scales[b * sc];
      for (int64_t r = b * kFp8Block; r < std::min(rows, (b + 1) * kFp8Block); ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const float a = std::fabs(x[r * cols + c]);
          if (!std::isfinite(a) && bad[b] < 0) bad[b] = r * cols + c;
          amax[c / kFp8Block] = std::max(amax[c / kFp8Block], a);
        }
      }
    }
  });
  for (int64_t b = 0; b < sr; ++b) {
    if (bad[b] >= 0) {
      Fail(
          "trainer: tensor '{}' holds a non-finite value ({}) at [{}, {}]; it cannot be "
          "quantized to FP8",
          name, x[bad[b]], bad[b] / cols, bad[b] % cols);
    }
  }
  for (float& s : scales) {
    s = s / kE4M3Max;
    if (s == 0) s = 1;  // an all-zero block (or one so small that amax / 448 underflows)
  }
  return scales;
}

void FillFp8Codes(const float* x, int64_t rows, int64_t cols, const std::vector<float>& scales,
                  uint8_t* dst) {
  const int64_t sc = (cols + kFp8Block - 1) / kFp8Block;
  ParallelFor(rows, 1, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* scale = &scales[(r / kFp8Block) * sc];
      for (int64_t c = 0; c < cols; ++c) {
        dst[r * cols + c] = F32ToE4M3(x[r * cols + c] / scale[c / kFp8Block]);
      }
    }
  });
}

void FillBf16(const float* x, int64_t n, uint8_t* dst) {
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  ParallelFor(n, 4096, [&](int64_t i0, int64_t i1, int) {
    for (int64_t i = i0; i < i1; ++i) out[i] = F32ToBF16(x[i]);
  });
}

TensorToWrite F32Tensor(std::string name, std::vector<int64_t> shape, const float* x) {
  TensorToWrite t{std::move(name), DType::kF32, std::move(shape), nullptr};
  const uint64_t bytes = t.nbytes();
  t.fill = [x, bytes](uint8_t* dst) { std::memcpy(dst, x, bytes); };
  return t;
}

// The stored tensors of `p` under `name` (the parameter's own, or a tied copy's): the weight,
// and for FP8 its scales.
void AddWeight(std::vector<TensorToWrite>& out, const std::string& name, const ParamInfo& p,
               const float* x, const std::string& dtype,
               std::map<std::string, std::shared_ptr<const std::vector<float>>>& fp8_scales) {
  if (dtype == "f32") {
    out.push_back(F32Tensor(name, p.shape, x));
  } else if (dtype == "fp8" && p.fp8_in_release && p.shape.size() == 2) {
    const int64_t rows = p.shape[0], cols = p.shape[1];
    auto& scales = fp8_scales[p.name];  // shared by a tensor and its tied copies
    if (scales == nullptr) {
      scales = std::make_shared<const std::vector<float>>(Fp8BlockScales(x, rows, cols, p.name));
    }
    out.push_back(F32Tensor(
        name + "_scale_inv",
        {(rows + kFp8Block - 1) / kFp8Block, (cols + kFp8Block - 1) / kFp8Block}, scales->data()));
    out.push_back({name, DType::kF8E4M3, p.shape, [x, rows, cols, scales](uint8_t* dst) {
                     FillFp8Codes(x, rows, cols, *scales, dst);
                   }});
  } else {
    const int64_t n = p.numel;
    out.push_back({name, DType::kBF16, p.shape, [x, n](uint8_t* dst) { FillBf16(x, n, dst); }});
  }
}

// config.json of the exported checkpoint.
Json CheckpointConfig(const Config& c, const std::string& dtype) {
  if (!c.raw.is_object()) {
    Fail("trainer: the model config has no config.json object (Config::raw) to write");
  }
  Json j = c.raw;
  if (dtype == "fp8") {
    j["quantization_config"] = {{"activation_scheme", "dynamic"},
                                {"fmt", "e4m3"},
                                {"quant_method", "fp8"},
                                {"weight_block_size", {kFp8Block, kFp8Block}}};
  } else {
    j.erase("quantization_config");
  }
  j["torch_dtype"] = dtype == "f32" ? "float32" : "bfloat16";
  return j;
}

// Files of a model folder that a new checkpoint replaces; anything else in an existing folder
// (a training state, logs, a generation_config.json) is carried over into the new one.
bool IsCheckpointFile(const std::string& f, const std::set<std::string>& copied) {
  return f == "config.json" || f == "model.safetensors.index.json" || copied.count(f) ||
         (f.starts_with("model") && f.ends_with(".safetensors"));
}

// Removes `path` (a file or folder) when the object dies, unless released.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(fs::path path) : path_(std::move(path)) {}
  ~RemoveOnExit() {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  void Release() { path_.clear(); }

 private:
  fs::path path_;
};

// Puts the complete folder `fresh` at `target`, replacing an existing folder there. `aside` is
// the name the old folder takes until it is removed. Removing the replaced folder is best effort:
// the new checkpoint is in place by then, and a leftover is removed by the next save.
void InstallFolder(const fs::path& fresh, const fs::path& target, const fs::path& aside) {
  std::error_code ec;
  auto rename_or_fail = [](const fs::path& from, const fs::path& to) {
    if (std::rename(from.c_str(), to.c_str()) != 0) {
      const int err = errno;
      Fail("{}: cannot rename to {} ({})", from.string(), to.string(), std::strerror(err));
    }
  };
  if (!fs::exists(target, ec)) {
    rename_or_fail(fresh, target);
    return;
  }
#ifdef RENAME_EXCHANGE
  // One atomic step: target becomes the new folder, fresh the old one.
  if (renameat2(AT_FDCWD, fresh.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(fresh, ec);
    return;
  }
  if (const int err = errno; err != EINVAL && err != ENOSYS && err != ENOTSUP) {
    Fail("{}: cannot exchange with {} ({})", fresh.string(), target.string(), std::strerror(err));
  }
#endif
  // Without an exchange: old away, new in, old removed. Between the two renames `target` is
  // absent, but both complete checkpoints exist (at `aside` and `fresh`).
  fs::remove_all(aside, ec);  // left by an earlier interrupted save; `target` is newer
  rename_or_fail(target, aside);
  if (std::rename(fresh.c_str(), target.c_str()) != 0) {
    const int err = errno;
    std::rename(aside.c_str(), target.c_str());  // put the old one back
    Fail("{}: cannot rename to {} ({})", fresh.string(), target.string(), std::strerror(err));
  }
  fs::remove_all(aside, ec);
}

// --- Training state: which config fields must agree ---

// Every field of Config that changes the computation, under its config.json name, as parsed
// (defaults filled in, q_lora_rank null -> 0, eos_token_id always a list). The FP8 block size is
// left out: it describes how a checkpoint was stored, not the model the float32 state belongs to.
Json ParsedFields(const Config& c) {
  Json rope = nullptr;
  if (c.rope_scaling) {
    const YarnScaling& y = *c.rope_scaling;
    rope = {{"factor", y.factor},
            {"original_max_position_embeddings", y.original_max_position_embeddings},
            {"beta_fast", y.beta_fast},
            {"beta_slow", y.beta_slow},
            {"mscale", y.mscale},
            {"mscale_all_dim", y.mscale_all_dim}};
  }
  return {{"model_type", c.model_type},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"num_hidden_layers", c.num_hidden_layers},
          {"num_attention_heads", c.num_attention_heads},
          {"intermediate_size", c.intermediate_size},
          {"moe_intermediate_size", c.moe_intermediate_size},
          {"q_lora_rank", c.q_lora_rank},
          {"kv_lora_rank", c.kv_lora_rank},
          {"qk_nope_head_dim", c.qk_nope_head_dim},
          {"qk_rope_head_dim", c.qk_rope_head_dim},
          {"v_head_dim", c.v_head_dim},
          {"n_routed_experts", c.n_routed_experts},
          {"n_shared_experts", c.n_shared_experts},
          {"num_experts_per_tok", c.num_experts_per_tok},
          {"n_group", c.n_group},
          {"topk_group", c.topk_group},
          {"first_k_dense_replace", c.first_k_dense_replace},
          {"moe_layer_freq", c.moe_layer_freq},
          {"topk_method", TopkMethodName(c.topk_method)},
          {"scoring_func", ScoringFuncName(c.scoring_func)},
          {"norm_topk_prob", c.norm_topk_prob},
          {"routed_scaling_factor", c.routed_scaling_factor},
          {"rms_norm_eps", c.rms_norm_eps},
          {"rope_theta", c.rope_theta},
          {"rope_scaling", rope},
          {"max_position_embeddings", c.max_position_embeddings},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"num_nextn_predict_layers", c.num_nextn_predict_layers},
          {"bos_token_id", c.bos_token_id},
          {"eos_token_id", c.eos_token_ids}};
}

// config.json fields compared neither as parsed nor raw: cosmetic ones (names, versions, the
// storage dtype and quantization), and those Config::FromJson accepts with one value only.
const std::set<std::string>& IgnoredFields() {
  static const std::set<std::string> kIgnored = {
      "architectures",       "auto_map",  "_name_or_path", "transformers_version", "torch_dtype",
      "quantization_config", "use_cache", "hidden_act",    "attention_bias",       "use_mla"};
  return kIgnored;
}

struct FieldDifference {
  std::string field, a, b;  // a, b: the values as JSON text, "absent" when missing
};

// The first key (sorted, recursing into objects as "outer.inner") whose values differ in objects
// a and b, skipping `skip` at the top level.
std::optional<FieldDifference> FirstDifference(const Json& a, const Json& b,
                                               const std::set<std::string>& skip,
                                               const std::string& prefix = "") {
  std::set<std::string> keys;
  for (auto it = a.begin(); it != a.end(); ++it) keys.insert(it.key());
  for (auto it = b.begin(); it != b.end(); ++it) keys.insert(it.key());
  for (const std::string& k : keys) {
    if (skip.count(k)) continue;
    const auto ia = a.find(k), ib = b.find(k);
    if (ia != a.end() && ib != b.end()) {
      if (ia->is_object() && ib->is_object()) {
        if (auto d = FirstDifference(*ia, *ib, {}, prefix + k + ".")) return d;
        continue;
      }
      if (*ia == *ib) continue;
    }
    return FieldDifference{prefix + k, ia == a.end() ? "absent" : ia->dump(),
                           ib == b.end() ? "absent" : ib->dump()};
  }
  return std::nullopt;
}

void CheckSameConfig(const std::string& path, const Json& state_json, const Config& model) {
  const Config state = Config::FromJson(state_json, path + " (metadata 'config')");
  std::optional<FieldDifference> d = FirstDifference(ParsedFields(state), ParsedFields(model), {});
  if (!d) {
    // Fields Config does not parse (the trainer may read some, like aux_loss_alpha): raw.
    // (Skipped when the model's Config was built without its config.json.)
    std::set<std::string> skip = IgnoredFields();
    const Json parsed = ParsedFields(model);
    for (auto it = parsed.begin(); it != parsed.end(); ++it) skip.insert(it.key());
    if (model.raw.is_object()) d = FirstDifference(state_json, model.raw, skip);
  }
  if (d) {
    Fail(
        "{}: the training state belongs to another config: field '{}' is {} in the state, {} "
        "in this model's config",
        path, d->field, d->a, d->b);
  }
}

int64_t ParseStep(const std::string& path, const std::string& text) {
  size_t used = 0;
  int64_t step = -1;
  try {
    step = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || step < 0) {
    Fail("{}: metadata 'adam_step' is '{}', expected a non-negative integer", path, text);
  }
  return step;
}

}  // namespace

void SaveCheckpoint(const Params& params, const std::string& dir, const SaveOptions& options) {
  const std::string& dtype = options.dtype;
  if (dtype != "fp8" && dtype != "bf16" && dtype != "f32") {
    Fail("checkpoint dtype '{}' is not supported; choose fp8, bf16 or f32", dtype);
  }
  const Json config = CheckpointConfig(params.config(), dtype);
  std::set<std::string> copied;
  for (const std::string& file : options.copy_files) {
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) Fail("{}: not a file (to copy into {})", file, dir);
    const std::string name = fs::path(file).filename().string();
    if (IsCheckpointFile(name, {})) {
      Fail("{}: a checkpoint writes its own {}; it cannot be copied in", file, name);
    }
    copied.insert(name);
  }

  // The folder, its sibling under construction, and the name the old one takes when replaced.
  fs::path target = fs::path(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();  // "out/" -> "out"
  if (target.empty()) Fail("checkpoint folder '{}': expected a folder path", dir);
  std::error_code ec;
  if (fs::is_symlink(target, ec)) target = fs::canonical(target, ec);
  const fs::file_status st = fs::status(target, ec);
  if (fs::exists(st) && !fs::is_directory(st)) {
    Fail("{}: exists and is not a folder (expected a model folder to write)", target.string());
  }
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  fs::create_directories(parent, ec);
  if (ec) {
    Fail("{}: cannot create folder for the checkpoint {} ({})", parent.string(), target.string(),
         ec.message());
  }
  const fs::path fresh = target.string() + ".tmp", aside = target.string() + ".old";
  fs::remove_all(fresh, ec);  // left by an interrupted save
  if (ec) Fail("{}: cannot remove ({})", fresh.string(), ec.message());
  if (!fs::create_directory(fresh, ec) || ec) {
    Fail("{}: cannot create folder ({})", fresh.string(), ec ? ec.message() : "exists");
  }
  RemoveOnExit cleanup(fresh);

  // Tensors: every parameter, the tied copies under their own names, the routing biases.
  std::vector<TensorToWrite> tensors;
  std::map<std::string, std::shared_ptr<const std::vector<float>>> fp8_scales;
  for (const ParamInfo& p : params.list()) {
    AddWeight(tensors, p.name, p, params.values() + p.offset, dtype, fp8_scales);
  }
  for (const auto& [copy, main] : params.tied()) {
    const ParamInfo* p = params.Find(main);
    if (p == nullptr) Fail("trainer: tied tensor '{}' has no parameter '{}'", copy, main);
    AddWeight(tensors, copy, *p, params.values() + p->offset, dtype, fp8_scales);
  }
  for (const auto& [name, b] : params.biases()) {
    tensors.push_back(F32Tensor(name, {static_cast<int64_t>(b.size())}, b.data()));
  }
  WriteSafetensors((fresh / "model.safetensors").string(), std::move(tensors), {{"format", "pt"}});

  for (const std::string& file : options.copy_files) {
    const fs::path to = fresh / fs::path(file).filename();
    fs::copy_file(file, to, fs::copy_options::overwrite_existing, ec);
    if (ec) Fail("{}: cannot copy to {} ({})", file, to.string(), ec.message());
  }
  WriteFileAtomic((fresh / "config.json").string(), config.dump(2) + "\n");

  // Carry over what else the old folder holds, as hard links where the file system allows.
  if (fs::is_directory(target, ec)) {
    for (const fs::directory_entry& e : fs::directory_iterator(target, ec)) {
      const std::string name = e.path().filename().string();
      if (IsCheckpointFile(name, copied)) continue;
      const fs::path to = fresh / name;
      const auto opts = fs::copy_options::recursive | fs::copy_options::copy_symlinks;
      std::error_code link_ec;
      fs::copy(e.path(), to, opts | fs::copy_options::create_hard_links, link_ec);
      if (link_ec) {
        fs::remove_all(to, ec);
        fs::copy(e.path(), to, opts, ec);
        if (ec)
          Fail("{}: cannot carry over into {} ({})", e.path().string(), to.string(), ec.message());
      }
    }
    if (ec) Fail("{}: cannot list ({})", target.string(), ec.message());
  }

  InstallFolder(fresh, target, aside);
  cleanup.Release();
}

void SaveState(const std::string& path, const Params& params, const AdamW& optimizer,
               const Json& meta) {
  if (optimizer.m().size() != params.buffer_size() ||
      optimizer.v().size() != params.buffer_size()) {
    Fail(
        "{}: the optimizer's moments hold {} / {} floats, the parameters {}; they belong to "
        "another model",
        path, optimizer.m().size(), optimizer.v().size(), params.buffer_size());
  }
  if (!params.config().raw.is_object()) {
    Fail("{}: the model config has no config.json object (Config::raw) to record", path);
  }
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent, ec)) {
    Fail("{}: cannot write the training state: {} {}", path, parent.string(),
         fs::exists(parent, ec) ? "is not a folder" : "does not exist");
  }
  std::vector<TensorToWrite> tensors;
  for (const ParamInfo& p : params.list()) {
    tensors.push_back(F32Tensor(kParam + p.name, p.shape, params.values() + p.offset));
    tensors.push_back(F32Tensor(kAdamM + p.name, p.shape, optimizer.m().data() + p.offset));
    tensors.push_back(F32Tensor(kAdamV + p.name, p.shape, optimizer.v().data() + p.offset));
  }
  for (const auto& [name, b] : params.biases()) {
    tensors.push_back(F32Tensor(kBias + name, {static_cast<int64_t>(b.size())}, b.data()));
  }
  const std::map<std::string, std::string> metadata = {
      {kStateKey, meta.dump()},
      {"adam_step", std::to_string(optimizer.step())},
      {"config", params.config().raw.dump()}};
  WriteSafetensors(path, std::move(tensors), metadata);
}

Json LoadState(const std::string& path, Params& params, AdamW& optimizer) {
  const SafetensorsFile file(path);
  const auto& md = file.metadata();
  const auto marker = md.find(kStateKey);
  if (marker == md.end()) {
    Fail(
        "{}: not a dsv3 training state (no '{}' metadata; a model checkpoint is loaded as "
        "weights, not resumed from)",
        path, kStateKey);
  }
  const auto step_text = md.find("adam_step");
  const auto config_text = md.find("config");
  if (step_text == md.end() || config_text == md.end()) {
    Fail("{}: training state without '{}' metadata", path,
         step_text == md.end() ? "adam_step" : "config");
  }
  const Json meta = ParseJson(marker->second, path + " (metadata '" + kStateKey + "')");
  const int64_t step = ParseStep(path, step_text->second);
  CheckSameConfig(path, ParseJson(config_text->second, path + " (metadata 'config')"),
                  params.config());
  if (optimizer.m().size() != params.buffer_size() ||
      optimizer.v().size() != params.buffer_size()) {
    Fail(
        "{}: the optimizer's moments hold {} / {} floats, the parameters {}; they belong to "
        "another model",
        path, optimizer.m().size(), optimizer.v().size(), params.buffer_size());
  }

  // Validate every tensor before changing anything, so a failed load leaves params untouched.
  std::map<std::string, const TensorInfo*> by_name;
  for (const TensorInfo& t : file.tensors()) by_name[t.name] = &t;
  std::set<std::string> expected;
  auto get = [&](const std::string& name, const std::vector<int64_t>& shape) {
    expected.insert(name);
    const auto it = by_name.find(name);
    if (it == by_name.end()) Fail("{}: training state tensor '{}' is missing", path, name);
    const TensorInfo& t = *it->second;
    if (t.dtype != DType::kF32 || t.shape != shape) {
      TensorInfo want;
      want.shape = shape;
      Fail("{}: training state tensor '{}' is {} {}, expected F32 {}", path, name,
           DTypeName(t.dtype), t.ShapeString(), want.ShapeString());
    }
    return reinterpret_cast<const float*>(t.data);
  };
  struct Copy {
    const float* from;
    float* to;
    int64_t n;
  };
  std::vector<Copy> copies;
  for (const ParamInfo& p : params.list()) {
    copies.push_back({get(kParam + p.name, p.shape), params.values() + p.offset, p.numel});
    copies.push_back({get(kAdamM + p.name, p.shape), optimizer.m().data() + p.offset, p.numel});
    copies.push_back({get(kAdamV + p.name, p.shape), optimizer.v().data() + p.offset, p.numel});
  }
  for (auto& [name, b] : params.biases()) {
    const int64_t n = static_cast<int64_t>(b.size());
    copies.push_back({get(kBias + name, {n}), b.data(), n});
  }
  for (const TensorInfo& t : file.tensors()) {
    if (!expected.count(t.name)) {
      Fail("{}: training state tensor '{}' is not part of this model", path, t.name);
    }
  }
  for (const Copy& c : copies) std::memcpy(c.to, c.from, c.n * sizeof(float));
  optimizer.set_step(step);
  return meta;
}

}  // namespace dsv3::train
