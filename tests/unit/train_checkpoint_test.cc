// The trainer's checkpoint export and training state on the tiny test models: F32 exact, BF16
// equal to the rounded values, FP8 within the E4M3 block-quantization bound and equal to a plain
// dequantization of the stored codes, every export loadable by the engine; the training state
// bit-exact, rejected when it is not one, belongs to another config or lacks a tensor; and a
// save that fails midway leaves the previous files byte for byte.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "io/safetensors_writer.h"
#include "model/config.h"
#include "model/weights.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace dsv3::train {
namespace {

namespace fs = std::filesystem;
using test::ErrorMessage;
using test::TempDir;
using test::TestData;
using ::testing::AllOf;
using ::testing::HasSubstr;

SaveOptions Dtype(const std::string& dtype, std::vector<std::string> copy_files = {}) {
  SaveOptions o;
  o.dtype = dtype;
  o.copy_files = std::move(copy_files);
  return o;
}

std::unique_ptr<Params> LoadModel(const std::string& dir) {
  auto p = std::make_unique<Params>(Config::Load(dir));
  p->Load(Checkpoint(dir));
  return p;
}

// Random values (normal, std 0.02) for every parameter and routing bias; seeded.
std::unique_ptr<Params> RandomModel(const std::string& dir, uint64_t seed) {
  auto p = std::make_unique<Params>(Config::Load(dir));
  p->Init(0.02, seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> normal(0, 0.1f);
  for (auto& [name, b] : p->biases())
    for (float& x : b) x = normal(rng);
  return p;
}

// The engine loads the folder as `dsv3 generate` would: every tensor bound, nothing unused.
void ExpectEngineLoads(const std::string& dir, const Params& params) {
  const Config c = Config::Load(dir);
  const Checkpoint ckpt(dir);
  LoadReport report;
  std::vector<MtpWeights> mtp;
  BindWeights(c, ckpt, &report, &mtp);
  EXPECT_THAT(report.unused, ::testing::IsEmpty());
  EXPECT_EQ(report.mtp_layers, params.config().num_nextn_predict_layers);
}

// Stored tied copies are the main tensor's bytes.
void ExpectTiedCopiesIdentical(const std::string& dir, const Params& params) {
  const Checkpoint ckpt(dir);
  ASSERT_EQ(params.tied().size(), 2u * params.config().num_nextn_predict_layers);
  for (const auto& [copy, main] : params.tied()) {
    const TensorInfo* a = ckpt.Find(copy);
    const TensorInfo* b = ckpt.Find(main);
    ASSERT_NE(a, nullptr) << copy;
    ASSERT_NE(b, nullptr) << main;
    EXPECT_EQ(a->dtype, b->dtype) << copy;
    ASSERT_EQ(a->nbytes, b->nbytes) << copy;
    EXPECT_EQ(std::memcmp(a->data, b->data, a->nbytes), 0) << copy;
  }
}

void ExpectBiasesExact(const std::string& dir, const Params& params) {
  const Checkpoint ckpt(dir);
  for (const auto& [name, b] : params.biases()) {
    const TensorInfo* t = ckpt.Find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, DType::kF32) << name;
    ASSERT_EQ(t->nbytes, b.size() * sizeof(float)) << name;
    EXPECT_EQ(std::memcmp(t->data, b.data(), t->nbytes), 0) << name;
  }
}

const char* const kModels[] = {"models/v3-tiny", "models/v2lite-tiny"};

TEST(TrainCheckpoint, F32RoundTripIsExact) {
  for (const char* model : kModels) {
    SCOPED_TRACE(model);
    DSV3_REQUIRE_DATA(TestData(model));
    const std::unique_ptr<Params> src = LoadModel(TestData(model));
    TempDir tmp;
    const std::string out = tmp / "out";
    SaveCheckpoint(*src, out, Dtype("f32"));

    const Json config = ReadJsonFile(out + "/config.json", 1 << 20);
    EXPECT_FALSE(config.contains("quantization_config"));
    EXPECT_EQ(config["torch_dtype"], "float32");
    Json expected = src->config().raw;
    expected.erase("quantization_config");
    expected["torch_dtype"] = "float32";
    EXPECT_EQ(config, expected);

    const std::unique_ptr<Params> back = LoadModel(out);
    ASSERT_EQ(back->list().size(), src->list().size());
    for (const ParamInfo& p : src->list()) {
      const ParamInfo* q = back->Find(p.name);
      ASSERT_NE(q, nullptr) << p.name;
      EXPECT_EQ(std::memcmp(src->values() + p.offset, back->values() + q->offset,
                            p.numel * sizeof(float)),
                0)
          << p.name;
    }
    EXPECT_EQ(back->biases(), src->biases());
    ExpectBiasesExact(out, *src);
    ExpectTiedCopiesIdentical(out, *src);
    ExpectEngineLoads(out, *src);
    EXPECT_FALSE(fs::exists(out + ".tmp"));
  }
}

TEST(TrainCheckpoint, Bf16IsEveryValueRounded) {
  for (const char* model : kModels) {
    SCOPED_TRACE(model);
    DSV3_REQUIRE_DATA(TestData(model));
    const std::unique_ptr<Params> src = RandomModel(TestData(model), 7);
    TempDir tmp;
    const std::string out = tmp / "out";
    SaveCheckpoint(*src, out, Dtype("bf16"));
    const Json config = ReadJsonFile(out + "/config.json", 1 << 20);
    EXPECT_FALSE(config.contains("quantization_config"));
    EXPECT_EQ(config["torch_dtype"], "bfloat16");

    const Checkpoint ckpt(out);
    const std::unique_ptr<Params> back = LoadModel(out);
    for (const ParamInfo& p : src->list()) {
      const TensorInfo* t = ckpt.Find(p.name);
      ASSERT_NE(t, nullptr) << p.name;
      ASSERT_EQ(t->dtype, DType::kBF16) << p.name;
      EXPECT_EQ(t->shape, p.shape) << p.name;
      const uint16_t* codes = reinterpret_cast<const uint16_t*>(t->data);
      const float* x = src->values() + p.offset;
      const float* y = back->values() + back->Find(p.name)->offset;
      int64_t bad = 0;
      for (int64_t i = 0; i < p.numel; ++i) {
        bad += codes[i] != F32ToBF16(x[i]);
        bad += BitsFromF32(y[i]) != BitsFromF32(BF16ToF32(F32ToBF16(x[i])));
      }
      EXPECT_EQ(bad, 0) << p.name;
    }
    ExpectBiasesExact(out, *src);
    ExpectTiedCopiesIdentical(out, *src);
    ExpectEngineLoads(out, *src);
  }
}

// The FP8 bound. With s the block's scale (amax / 448) and y = x / s, the writer stores
// c = E4M3(fl(y)), round to nearest even. E4M3 normals (|y| >= 2^-6) carry 3 mantissa bits, so
// their spacing at y is 2^(floor(log2|y|) - 3) and rounding moves y by at most half of it,
// 2^-4 * 2^floor(log2|y|) <= 2^-4 |y|; the subnormals are the multiples of 2^-9 below 2^-6,
// so there the move is at most 2^-10. Saturation to 448 only absorbs fl(amax / s) exceeding 448
// by float rounding. In value space, with the float rounding of x / s, of s and of the
// reader's c * s (each relative 2^-24) bounded generously:
//   |c * s - x| <= max(2^-4 |x|, 2^-10 s) * (1 + 2^-20) + 2^-22 |x|.
// (For s a normal float; a block's amax <= 448 * 2^-126 would make it subnormal.)
double Fp8Bound(float x, float s) {
  const double ax = std::fabs(static_cast<double>(x));
  return std::max(std::ldexp(ax, -4), std::ldexp(static_cast<double>(s), -10)) *
             (1 + std::ldexp(1.0, -20)) +
         std::ldexp(ax, -22);
}

TEST(TrainCheckpoint, Fp8WithinBlockBoundAndEqualToPlainDequantization) {
  DSV3_REQUIRE_DATA(TestData("models/v3-tiny"));
  const std::unique_ptr<Params> src = RandomModel(TestData("models/v3-tiny"), 11);
  // Special blocks: one all zero (scale 1), one where a single large value pushes every other
  // value into E4M3's subnormal range, one with amax exactly a power of two.
  const std::string w = "model.layers.1.mlp.experts.0.up_proj.weight";  // [128, 256]
  float* x = src->value(w);
  const int64_t cols = src->Find(w)->shape[1];
  for (int64_t r = 0; r < 128; ++r) {
    for (int64_t c = 0; c < 128; ++c) x[r * cols + c] = 0;
    for (int64_t c = 128; c < 256; ++c) x[r * cols + c] *= 1e-3f;
  }
  x[5 * cols + 130] = 3.0f;
  src->value("model.layers.0.self_attn.q_a_proj.weight")[0] = 8.0f;

  TempDir tmp;
  const std::string out = tmp / "out";
  SaveCheckpoint(*src, out, {});  // fp8 is the default
  const Json config = ReadJsonFile(out + "/config.json", 1 << 20);
  EXPECT_EQ(config["quantization_config"], Json::parse(R"({"activation_scheme":"dynamic",
      "fmt":"e4m3","quant_method":"fp8","weight_block_size":[128,128]})"));
  EXPECT_EQ(config["torch_dtype"], "bfloat16");

  const Checkpoint ckpt(out);
  const std::unique_ptr<Params> back = LoadModel(out);
  int64_t fp8_tensors = 0, subnormal_codes = 0, partial_blocks = 0;
  double worst_ratio = 0;  // largest |error| / bound
  for (const ParamInfo& p : src->list()) {
    SCOPED_TRACE(p.name);
    const TensorInfo* t = ckpt.Find(p.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->shape, p.shape);
    const float* v = src->values() + p.offset;
    const float* loaded = back->values() + back->Find(p.name)->offset;
    if (!p.fp8_in_release) {
      ASSERT_EQ(t->dtype, DType::kBF16);
      EXPECT_EQ(ckpt.Find(p.name + "_scale_inv"), nullptr);
      const uint16_t* codes = reinterpret_cast<const uint16_t*>(t->data);
      int64_t bad = 0;
      for (int64_t i = 0; i < p.numel; ++i) bad += codes[i] != F32ToBF16(v[i]);
      EXPECT_EQ(bad, 0);
      continue;
    }
    ++fp8_tensors;
    ASSERT_EQ(t->dtype, DType::kF8E4M3);
    const int64_t rows = p.shape[0], cols = p.shape[1];
    const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    partial_blocks += rows % 128 != 0 || cols % 128 != 0;
    const TensorInfo* s = ckpt.Find(p.name + "_scale_inv");
    ASSERT_NE(s, nullptr);
    ASSERT_EQ(s->dtype, DType::kF32);
    ASSERT_EQ(s->shape, (std::vector<int64_t>{sr, sc}));
    const float* scale = reinterpret_cast<const float*>(s->data);
    // Scales recomputed here: amax / 448 per block, 1 for an all-zero block.
    std::vector<float> amax(sr * sc, 0.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        amax[(r / 128) * sc + c / 128] =
            std::max(amax[(r / 128) * sc + c / 128], std::fabs(v[r * cols + c]));
    int64_t bad_scales = 0, bad_codes = 0, bad_dequant = 0, over_bound = 0;
    for (int64_t b = 0; b < sr * sc; ++b) {
      bad_scales += BitsFromF32(scale[b]) != BitsFromF32(amax[b] > 0 ? amax[b] / 448.0f : 1.0f);
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t i = r * cols + c;
        const float sv = scale[(r / 128) * sc + c / 128];
        const uint8_t code = t->data[i];
        bad_codes += code != F32ToE4M3(v[i] / sv);
        subnormal_codes += (code & 0x78) == 0 && (code & 0x07) != 0;
        const float dequant = E4M3ToF32(code) * sv;  // what every reader computes
        bad_dequant += BitsFromF32(dequant) != BitsFromF32(loaded[i]);
        const double err = std::fabs(static_cast<double>(loaded[i]) - v[i]);
        over_bound += !(err <= Fp8Bound(v[i], sv));
        worst_ratio = std::max(worst_ratio, err / Fp8Bound(v[i], sv));
      }
    }
    EXPECT_EQ(bad_scales, 0);
    EXPECT_EQ(bad_codes, 0);
    EXPECT_EQ(bad_dequant, 0);
    EXPECT_EQ(over_bound, 0);
  }
  EXPECT_GT(fp8_tensors, 50);
  EXPECT_GT(partial_blocks, 0);   // q_a [96, 256], kv_a [80, 256], ...
  EXPECT_GT(subnormal_codes, 0);  // the block with one large value
  EXPECT_GT(worst_ratio, 0.5);    // the bound is close to what rounding does
  // The all-zero block: scale 1, zero codes.
  const TensorInfo* zs = ckpt.Find(w + "_scale_inv");
  ASSERT_NE(zs, nullptr);
  EXPECT_EQ(reinterpret_cast<const float*>(zs->data)[0], 1.0f);
  EXPECT_EQ(reinterpret_cast<const float*>(zs->data)[1], 3.0f / 448.0f);
  ExpectBiasesExact(out, *src);
  ExpectTiedCopiesIdentical(out, *src);
  ExpectEngineLoads(out, *src);
  // The dsv3 binary reads it too.
  const test::RunResult info = test::RunCommand(test::Dsv3Binary() + " info -m " + out);
  EXPECT_EQ(info.status, 0) << info.output();
}

TEST(TrainCheckpoint, Fp8RejectsNonFiniteValues) {
  DSV3_REQUIRE_DATA(TestData("models/v3-tiny"));
  const std::unique_ptr<Params> src = RandomModel(TestData("models/v3-tiny"), 3);
  const std::string w = "model.layers.0.mlp.down_proj.weight";
  src->value(w)[300] = std::nanf("");
  TempDir tmp;
  EXPECT_THAT(ErrorMessage([&] { SaveCheckpoint(*src, tmp / "out", {}); }),
              AllOf(HasSubstr(w), HasSubstr("non-finite")));
  EXPECT_FALSE(fs::exists(tmp / "out"));
  EXPECT_FALSE(fs::exists(tmp / "out.tmp"));
  // BF16 and F32 store it as it is.
  SaveCheckpoint(*src, tmp / "out", Dtype("f32"));
  EXPECT_TRUE(std::isnan(LoadModel(tmp / "out")->value(w)[300]));
}

TEST(TrainCheckpoint, CopiesFilesAndRejectsBadOptions) {
  DSV3_REQUIRE_DATA(TestData("models/v2lite-tiny"));
  const std::unique_ptr<Params> src = RandomModel(TestData("models/v2lite-tiny"), 1);
  TempDir tmp;
  test::WriteFile(tmp / "tokenizer.json", "{\"tok\": 1}");
  SaveCheckpoint(*src, tmp / "out/", Dtype("bf16", {tmp / "tokenizer.json"}));
  EXPECT_EQ(test::ReadFile(tmp / "out/tokenizer.json"), "{\"tok\": 1}");
  EXPECT_THAT(ErrorMessage([&] { SaveCheckpoint(*src, tmp / "x", Dtype("fp16")); }),
              HasSubstr("'fp16'"));
  EXPECT_THAT(ErrorMessage([&] { SaveCheckpoint(*src, tmp / "x", Dtype("bf16", {tmp / "nope"})); }),
              HasSubstr(tmp / "nope"));
  EXPECT_FALSE(fs::exists(tmp / "x"));
}

// Non-zero moments with special values (signed zero, subnormals, NaN payloads, infinities).
void FillState(Params& params, AdamW& opt, uint64_t seed) {
  params.Init(0.02, seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_int_distribution<uint32_t> bits;
  for (auto& [name, b] : params.biases())
    for (float& x : b) x = F32FromBits(bits(rng) & 0xBFFFFFFF);  // finite, |x| < 2
  for (size_t i = 0; i < params.buffer_size(); ++i) {
    opt.m()[i] = F32FromBits(bits(rng));
    opt.v()[i] = F32FromBits(bits(rng) & 0x7FFFFFFF);
  }
  const float specials[] = {-0.0f, F32FromBits(1), F32FromBits(0x7FC01234), -INFINITY, 1e-45f};
  for (size_t k = 0; k < std::size(specials); ++k) {
    opt.m()[k] = specials[k];
    params.values()[k] = specials[k];
  }
  opt.set_step(12345);
}

void ExpectSameState(const Params& a, const AdamW& oa, const Params& b, const AdamW& ob) {
  ASSERT_EQ(a.buffer_size(), b.buffer_size());
  for (const ParamInfo& p : a.list()) {
    const size_t n = p.numel * sizeof(float);
    EXPECT_EQ(std::memcmp(a.values() + p.offset, b.values() + p.offset, n), 0) << p.name;
    EXPECT_EQ(std::memcmp(oa.m().data() + p.offset, ob.m().data() + p.offset, n), 0) << p.name;
    EXPECT_EQ(std::memcmp(oa.v().data() + p.offset, ob.v().data() + p.offset, n), 0) << p.name;
  }
  ASSERT_EQ(a.biases().size(), b.biases().size());
  for (const auto& [name, bias] : a.biases()) {
    const std::vector<float>& other = b.biases().at(name);
    ASSERT_EQ(bias.size(), other.size());
    EXPECT_EQ(std::memcmp(bias.data(), other.data(), bias.size() * sizeof(float)), 0) << name;
  }
  EXPECT_EQ(oa.step(), ob.step());
}

const Json kMeta = Json::parse(R"({"step": 12345, "lr": 3e-4, "data": {"file": "a.bin",
    "position": 987654321}, "loss": [2.5, 2.25]})");

TEST(TrainState, RoundTripIsBitExact) {
  for (const char* model : kModels) {
    SCOPED_TRACE(model);
    DSV3_REQUIRE_DATA(TestData(model));
    const Config c = Config::Load(TestData(model));
    Params params(c);
    AdamW opt(params, {});
    FillState(params, opt, 5);
    TempDir tmp;
    SaveState(tmp / "state.safetensors", params, opt, kMeta);
    EXPECT_FALSE(fs::exists(tmp / "state.safetensors.tmp"));

    Params back(c);
    AdamW back_opt(back, {});
    const Json meta = LoadState(tmp / "state.safetensors", back, back_opt);
    EXPECT_EQ(meta, kMeta);
    ExpectSameState(params, opt, back, back_opt);

    // The layout on disk is the documented one.
    const SafetensorsFile f(tmp / "state.safetensors");
    EXPECT_EQ(f.metadata().at("adam_step"), "12345");
    EXPECT_EQ(Json::parse(f.metadata().at("dsv3_train_state")), kMeta);
    EXPECT_EQ(Json::parse(f.metadata().at("config")), c.raw);
    EXPECT_EQ(f.tensors().size(), 3 * params.list().size() + params.biases().size());
  }
}

// A copy of the state file at `from` with its tensors changed by `edit` (tensor name -> new
// shape; an empty shape drops the tensor).
void RewriteState(const std::string& from, const std::string& to,
                  const std::map<std::string, std::vector<int64_t>>& edit) {
  const SafetensorsFile f(from);
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo& t : f.tensors()) {
    std::vector<int64_t> shape = t.shape;
    if (auto it = edit.find(t.name); it != edit.end()) {
      if (it->second.empty()) continue;
      shape = it->second;
    }
    const uint8_t* data = t.data;
    const uint64_t have = t.nbytes;
    tensors.push_back({t.name, t.dtype, shape, nullptr});
    const uint64_t want = tensors.back().nbytes();
    tensors.back().fill = [data, have, want](uint8_t* dst) {
      std::memset(dst, 0, want);
      std::memcpy(dst, data, std::min(have, want));
    };
  }
  WriteSafetensors(to, std::move(tensors), f.metadata());
}

TEST(TrainState, RejectsWhatIsNotThisModelsState) {
  DSV3_REQUIRE_DATA(TestData("models/v3-tiny"));
  const Config c = Config::Load(TestData("models/v3-tiny"));
  Params params(c);
  AdamW opt(params, {});
  FillState(params, opt, 9);
  TempDir tmp;
  const std::string state = tmp / "state.safetensors";
  SaveState(state, params, opt, kMeta);

  // A plain checkpoint is not a state.
  const std::string plain = TestData("models/v2lite-tiny/model.safetensors");
  {
    Params p(Config::Load(TestData("models/v2lite-tiny")));
    AdamW o(p, {});
    EXPECT_THAT(ErrorMessage([&] { LoadState(plain, p, o); }),
                AllOf(HasSubstr(plain), HasSubstr("not a dsv3 training state")));
  }

  // Another config: a field Config parses, and one it does not.
  auto other = [&](const char* field, const Json& value) {
    Json j = c.raw;
    j[field] = value;
    Params p(Config::FromJson(j, "edited config"));
    AdamW o(p, {});
    return ErrorMessage([&] { LoadState(state, p, o); });
  };
  EXPECT_THAT(other("hidden_size", 128),
              AllOf(HasSubstr(state), HasSubstr("another config"), HasSubstr("'hidden_size'"),
                    HasSubstr("256"), HasSubstr("128")));
  EXPECT_THAT(other("routed_scaling_factor", 1.5), HasSubstr("'routed_scaling_factor'"));
  EXPECT_THAT(other("aux_loss_alpha", 0.01), HasSubstr("'aux_loss_alpha'"));
  {
    Json j = c.raw;
    j["rope_scaling"]["factor"] = 20;
    Params p(Config::FromJson(j, "edited config"));
    AdamW o(p, {});
    EXPECT_THAT(ErrorMessage([&] { LoadState(state, p, o); }), HasSubstr("'rope_scaling.factor'"));
  }
  // Cosmetic differences and explicit defaults are the same config.
  {
    Json j = c.raw;
    j["transformers_version"] = "9.9.9";
    j["torch_dtype"] = "float32";
    j.erase("quantization_config");
    j.erase("scoring_func");  // left to its default for deepseek_v3, sigmoid
    Params p(Config::FromJson(j, "edited config"));
    AdamW o(p, {});
    EXPECT_EQ(LoadState(state, p, o), kMeta);
    ExpectSameState(params, opt, p, o);
  }

  // Missing tensors and shape mismatches name the tensor; nothing is changed by a failed load.
  Params fresh(c);
  AdamW fresh_opt(fresh, {});
  const std::string bad = tmp / "bad.safetensors";
  RewriteState(state, bad, {{"adam_v/model.norm.weight", {}}});
  EXPECT_THAT(ErrorMessage([&] { LoadState(bad, fresh, fresh_opt); }),
              AllOf(HasSubstr(bad), HasSubstr("'adam_v/model.norm.weight'"), HasSubstr("missing")));
  const std::string bias = "bias/model.layers.1.mlp.gate.e_score_correction_bias";
  RewriteState(state, bad, {{bias, {}}});
  EXPECT_THAT(ErrorMessage([&] { LoadState(bad, fresh, fresh_opt); }), HasSubstr(bias));
  RewriteState(state, bad,
               {{"param/model.layers.0.self_attn.kv_a_proj_with_mqa.weight", {80, 128}}});
  EXPECT_THAT(ErrorMessage([&] { LoadState(bad, fresh, fresh_opt); }),
              AllOf(HasSubstr("'param/model.layers.0.self_attn.kv_a_proj_with_mqa.weight'"),
                    HasSubstr("[80, 128]"), HasSubstr("[80, 256]")));
  for (const ParamInfo& p : fresh.list()) {
    for (int64_t i = 0; i < p.numel; ++i) ASSERT_EQ(fresh.values()[p.offset + i], 0) << p.name;
  }
  EXPECT_EQ(fresh_opt.step(), 0);
  // A file that is not safetensors at all.
  test::WriteFile(bad, "{\"hello\": 1}");
  EXPECT_THAT(ErrorMessage([&] { LoadState(bad, fresh, fresh_opt); }), HasSubstr(bad));
}

// Every file under `dir`, relative name -> bytes.
std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file())
      files[fs::relative(e.path(), dir).string()] = test::ReadFile(e.path().string());
  }
  return files;
}

// Lowers this process's file size limit (writes past it fail with EFBIG, as on a full disk) while
// alive; works as root too. ok() is false where the limit is not enforced.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes, const std::string& probe) {
    std::signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &saved_);
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) return;
    std::FILE* f = std::fopen(probe.c_str(), "wb");
    if (f == nullptr) return;
    const std::string block(bytes + 4096, 'x');
    const bool wrote_all = std::fwrite(block.data(), 1, block.size(), f) == block.size();
    ok_ = std::fclose(f) != 0 || !wrote_all;
    std::remove(probe.c_str());
  }
  ~FileSizeLimit() { setrlimit(RLIMIT_FSIZE, &saved_); }
  bool ok() const { return ok_; }

 private:
  rlimit saved_{};
  bool ok_ = false;
};

TEST(TrainCheckpoint, FailedSaveLeavesPreviousCheckpoint) {
  DSV3_REQUIRE_DATA(TestData("models/v3-tiny"));
  const std::unique_ptr<Params> a = RandomModel(TestData("models/v3-tiny"), 21);
  const std::unique_ptr<Params> b = RandomModel(TestData("models/v3-tiny"), 22);
  TempDir tmp;
  const std::string out = tmp / "out";
  SaveCheckpoint(*a, out, Dtype("f32"));
  test::WriteFile(out + "/notes.txt", "kept");  // not part of a checkpoint
  fs::create_directory(out + "/logs");
  test::WriteFile(out + "/logs/run.log", "log");
  const auto before = Snapshot(out);

  // Disk full midway through model.safetensors.
  {
    FileSizeLimit limit(256 << 10, tmp / "probe");
    if (!limit.ok()) GTEST_SKIP() << "RLIMIT_FSIZE is not enforced here";
    const std::string err = ErrorMessage([&] { SaveCheckpoint(*b, out, Dtype("bf16")); });
    EXPECT_THAT(err, AllOf(HasSubstr(out + ".tmp/model.safetensors"), HasSubstr("disk full")));
  }
  EXPECT_EQ(Snapshot(out), before);
  EXPECT_FALSE(fs::exists(out + ".tmp"));

  // The target is a file; its parent is a file.
  test::WriteFile(tmp / "file", "x");
  EXPECT_THAT(ErrorMessage([&] { SaveCheckpoint(*b, tmp / "file", {}); }),
              AllOf(HasSubstr(tmp / "file"), HasSubstr("not a folder")));
  EXPECT_THAT(ErrorMessage([&] { SaveCheckpoint(*b, tmp / "file/ckpt", {}); }),
              HasSubstr(tmp / "file"));
  EXPECT_EQ(test::ReadFile(tmp / "file"), "x");

  // A successful save replaces the checkpoint and keeps the other files.
  SaveCheckpoint(*b, out, Dtype("bf16"));
  EXPECT_EQ(test::ReadFile(out + "/notes.txt"), "kept");
  EXPECT_EQ(test::ReadFile(out + "/logs/run.log"), "log");
  EXPECT_EQ(ReadJsonFile(out + "/config.json", 1 << 20)["torch_dtype"], "bfloat16");
  const std::unique_ptr<Params> back = LoadModel(out);
  const ParamInfo& p = b->list()[3];
  EXPECT_EQ(back->value(p.name)[0], BF16ToF32(F32ToBF16(b->values()[p.offset])));
  EXPECT_FALSE(fs::exists(out + ".tmp"));
  EXPECT_FALSE(fs::exists(out + ".old"));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(tmp.path())) names.push_back(e.path().filename());
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("out", "file"));
}

TEST(TrainState, FailedSaveLeavesPreviousState) {
  DSV3_REQUIRE_DATA(TestData("models/v3-tiny"));
  const Config c = Config::Load(TestData("models/v3-tiny"));
  Params params(c);
  AdamW opt(params, {});
  FillState(params, opt, 1);
  TempDir tmp;
  const std::string state = tmp / "state.safetensors";
  SaveState(state, params, opt, kMeta);
  const std::string before = test::ReadFile(state);
  FillState(params, opt, 2);
  {
    FileSizeLimit limit(1 << 20, tmp / "probe");
    if (!limit.ok()) GTEST_SKIP() << "RLIMIT_FSIZE is not enforced here";
    EXPECT_THAT(ErrorMessage([&] { SaveState(state, params, opt, {}); }),
                AllOf(HasSubstr(state + ".tmp"), HasSubstr("disk full")));
  }
  EXPECT_EQ(test::ReadFile(state), before);
  EXPECT_FALSE(fs::exists(state + ".tmp"));
  test::WriteFile(tmp / "file", "x");
  EXPECT_THAT(ErrorMessage([&] { SaveState(tmp / "file/state.safetensors", params, opt, {}); }),
              HasSubstr(tmp / "file"));
}

}  // namespace
}  // namespace dsv3::train
