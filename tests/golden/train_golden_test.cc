// The float32 trainer against ../shared/testdata/training/ (DeepSeek's reference model code under
// PyTorch autograd): losses, per-position losses, expert loads, the gradient of every parameter,
// the routing-bias update and three AdamW steps, with the tolerances that folder's README gives.
// Every folder found there is checked, not a fixed list.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "core/json.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "tests/test_util.h"
#include "train/optimizer.h"
#include "train/params.h"
#include "train/train_model.h"

namespace dsv3::train {
namespace {

class TrainReference {
 public:
  explicit TrainReference(const std::string& dir) : dir_(dir) {
    json_ = ReadJsonFile(dir + "/train_reference.json", 64u << 20);
    const std::string bin =
        ReadFileLimited(dir + "/" + json_["blob"].get<std::string>(), size_t{1} << 30);
    blob_.assign(bin.begin(), bin.end());
  }
  const Json& json() const { return json_; }
  std::string checkpoint_dir() const {
    return dir_ + "/" + json_["starting_checkpoint"]["path"].get<std::string>();
  }
  template <typename T>
  std::vector<T> Array(const Json& entry) const {
    int64_t n = 1;
    for (const Json& d : entry["shape"]) n *= d.get<int64_t>();
    std::vector<T> v(static_cast<size_t>(n));
    const size_t offset = entry["offset"].get<size_t>();
    if (offset + n * sizeof(T) > blob_.size()) throw std::runtime_error("entry outside blob");
    std::memcpy(v.data(), blob_.data() + offset, n * sizeof(T));
    return v;
  }
  // A tensor entry (dense / rows / sample) as (flat index, value) pairs, or the dense array.
  std::vector<float> Dense(const Json& e) const {
    EXPECT_EQ(e["storage"], "dense");
    return Array<float>(e);
  }

 private:
  std::string dir_;
  Json json_;
  std::vector<uint8_t> blob_;
};

std::vector<std::string> ReferenceFolders() {
  std::vector<std::string> out;
  const std::string root = test::TestData("training");
  if (!std::filesystem::exists(root)) return out;
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (std::filesystem::exists(e.path() / "train_reference.json")) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct TrainSetup {
  Config config;
  std::unique_ptr<Params> params;
  Objective objective;
  std::vector<int32_t> tokens;
  int64_t B = 0, T = 0;
};

TrainSetup Prepare(const TrainReference& ref) {
  TrainSetup s;
  s.config = Config::Load(ref.checkpoint_dir());
  s.params = std::make_unique<Params>(s.config);
  s.params->Load(Checkpoint(ref.checkpoint_dir()));
  const Json& settings = ref.json()["settings"];
  s.objective.mtp_lambda =
      settings["mtp_lambda"].is_null() ? 0.0 : settings["mtp_lambda"].get<double>();
  s.objective.balance_alpha = settings["balance_alpha"].get<double>();
  s.B = settings["batch_size"].get<int64_t>();
  s.T = settings["seq_len"].get<int64_t>();
  for (const Json& row : ref.json()["batch"]["tokens"])
    for (const Json& t : row) s.tokens.push_back(t.get<int32_t>());
  EXPECT_EQ(static_cast<int64_t>(s.tokens.size()), s.B * (s.T + 1));
  return s;
}

struct Diff {
  double rel_l2 = 0, max_abs = 0, ref_max = 0;
};
Diff Compare(const float* got, const std::vector<float>& want) {
  double num = 0, den = 0;
  Diff d;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = static_cast<double>(got[i]) - want[i];
    num += e * e;
    den += static_cast<double>(want[i]) * want[i];
    d.max_abs = std::max(d.max_abs, std::fabs(e));
    d.ref_max = std::max(d.ref_max, std::fabs(static_cast<double>(want[i])));
  }
  d.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return d;
}

TEST(TrainGolden, FoldersPresent) {
  DSV3_REQUIRE_DATA(test::TestData("training"));
  EXPECT_GE(ReferenceFolders().size(), 2u);
}

// The parameter list, the state-0 losses, routing, and every gradient.
TEST(TrainGolden, Step0LossesRoutingAndGradients) {
  DSV3_REQUIRE_DATA(test::TestData("training"));
  for (const std::string& dir : ReferenceFolders()) {
    SCOPED_TRACE(dir);
    const TrainReference ref(dir);
    TrainSetup s = Prepare(ref);
    Params& p = *s.params;
    // The trainable tensors are exactly the reference's parameters (its order is the checkpoint
    // files'; ours is the tensor specs').
    std::vector<std::string> names;
    for (const ParamInfo& i : p.list()) names.push_back(i.name);
    std::vector<std::string> want_names;
    for (const Json& e : ref.json()["parameters"]) {
      want_names.push_back(e["name"].get<std::string>());
      const ParamInfo* i = p.Find(want_names.back());
      ASSERT_NE(i, nullptr) << want_names.back();
      EXPECT_EQ(i->shape, e["shape"].get<std::vector<int64_t>>()) << want_names.back();
      EXPECT_EQ(i->weight_decay, e["weight_decay"].get<bool>()) << want_names.back();
    }
    std::sort(names.begin(), names.end());
    std::sort(want_names.begin(), want_names.end());
    EXPECT_EQ(names, want_names);

    TrainModel model(p, s.B, s.T, s.objective);
    const Losses loss = model.Forward(s.tokens.data());
    // Activations first (they localize a forward bug).
    for (const auto& [name, e] : ref.json()["step0"]["activations"].items()) {
      SCOPED_TRACE(name);
      const float* got = nullptr;
      if (name == "final_norm_out") got = model.final_norm_out();
      if (name == "mtp.eh_proj_out") got = model.mtp_eh_proj_out();
      if (name == "mtp.block_out") got = model.mtp_block_out();
      if (name.rfind("layer", 0) == 0 && name.find(".block_out") != std::string::npos)
        got = model.residual(std::stoll(name.substr(5)));
      ASSERT_NE(got, nullptr) << "unknown activation";
      const std::vector<float> want = ref.Array<float>(e);
      const Diff d = Compare(got, want);
      EXPECT_LE(d.rel_l2, 1e-5) << "max abs " << d.max_abs;
    }
    const Json& l = ref.json()["step0"]["loss"];
    EXPECT_NEAR(loss.total, l["total"].get<double>(), 1e-4);
    EXPECT_NEAR(loss.ce, l["ce"].get<double>(), 1e-4);
    if (l.contains("mtp_ce")) EXPECT_NEAR(loss.mtp_ce, l["mtp_ce"].get<double>(), 1e-4);
    EXPECT_NEAR(loss.balance, l["balance"].get<double>(), 3e-6);
    const Json& pp = ref.json()["step0"]["per_position"];
    const std::vector<float> ce = ref.Array<float>(pp["ce"]);
    ASSERT_EQ(ce.size(), model.ce_per_position().size());
    EXPECT_LT(Compare(model.ce_per_position().data(), ce).max_abs, 1e-4);
    if (pp.contains("mtp_ce")) {
      const std::vector<float> mtp = ref.Array<float>(pp["mtp_ce"]);
      ASSERT_EQ(mtp.size(), model.mtp_ce_per_position().size());
      EXPECT_LT(Compare(model.mtp_ce_per_position().data(), mtp).max_abs, 1e-4);
    }
    // Routing: loads exact, each layer's balance loss within 1e-6.
    const Json& moe = ref.json()["step0"]["moe"];
    ASSERT_EQ(moe.size(), model.moe_stats().size());
    for (size_t i = 0; i < moe.size(); ++i) {
      const MoeLayerStats& st = model.moe_stats()[i];
      EXPECT_EQ(st.layer, moe[i]["layer"].get<int64_t>());
      EXPECT_EQ(st.is_mtp, moe[i]["is_mtp"].get<bool>());
      EXPECT_EQ(st.load, moe[i]["load"].get<std::vector<int64_t>>()) << "layer " << st.layer;
      EXPECT_NEAR(st.balance_loss, moe[i]["balance_loss"].get<double>(), 1e-6);
      EXPECT_NEAR(st.balance_loss, l["balance_per_layer"][std::to_string(st.layer)].get<double>(),
                  1e-6);
    }

    p.ZeroGrads();
    model.Backward();
    const Json& grads = ref.json()["step0"]["grads"];
    for (const ParamInfo& i : p.list()) {
      SCOPED_TRACE(i.name);
      ASSERT_TRUE(grads.contains(i.name));
      const Json& e = grads[i.name];
      const float* g = p.grads() + i.offset;
      std::vector<float> want(static_cast<size_t>(i.numel), 0.0f);
      if (e["storage"] == "rows") {
        const std::vector<int32_t> rows = ref.Array<int32_t>(e["rows"]);
        const std::vector<float> values = ref.Array<float>(e["values"]);
        const int64_t cols = i.shape[1];
        std::set<int32_t> listed(rows.begin(), rows.end());
        for (size_t r = 0; r < rows.size(); ++r)
          std::copy_n(values.begin() + r * cols, cols, want.begin() + rows[r] * cols);
        // Exactly the listed rows are nonzero.
        for (int64_t r = 0; r < i.shape[0]; ++r) {
          bool nonzero = false;
          for (int64_t c = 0; c < cols; ++c) nonzero |= g[r * cols + c] != 0;
          EXPECT_EQ(nonzero, listed.count(static_cast<int32_t>(r)) > 0) << "row " << r;
        }
      } else {
        want = ref.Dense(e);
      }
      const Diff d = Compare(g, want);
      EXPECT_LE(d.rel_l2, 1e-4);
      EXPECT_LE(d.max_abs, 1e-4 * d.ref_max);
    }
    EXPECT_NEAR(GradNorm(p), ref.json()["step0"]["grad_global_l2"].get<double>(),
                1e-4 * ref.json()["step0"]["grad_global_l2"].get<double>());
  }
}

// Three steps: AdamW, the bias update (bit-exact), losses and loads of each state, and the sampled
// parameters of states 1-3.
TEST(TrainGolden, ThreeAdamWStepsWithBiasUpdates) {
  DSV3_REQUIRE_DATA(test::TestData("training"));
  for (const std::string& dir : ReferenceFolders()) {
    SCOPED_TRACE(dir);
    const TrainReference ref(dir);
    TrainSetup s = Prepare(ref);
    Params& p = *s.params;
    const Json& settings = ref.json()["settings"];
    const Json& adam = settings["adamw"];
    AdamWOptions o;
    o.beta1 = adam["beta1"].get<double>();
    o.beta2 = adam["beta2"].get<double>();
    o.eps = adam["eps"].get<double>();
    o.weight_decay = adam["weight_decay"].get<double>();
    const double lr = adam["lr"].get<double>();
    const float gamma =
        settings["bias_gamma"].is_null() ? 0.0f : settings["bias_gamma"].get<float>();
    AdamW opt(p, o);
    TrainModel model(p, s.B, s.T, s.objective);
    const Json& traj = ref.json()["trajectory"];
    // The step-0 gradient, to tell well-conditioned elements of p_1 from the rest.
    std::vector<float> g0;
    std::vector<float> p0(p.values(), p.values() + p.buffer_size());
    for (size_t k = 0; k < traj.size(); ++k) {
      SCOPED_TRACE("state " + std::to_string(k));
      const Losses loss = model.Forward(s.tokens.data());
      EXPECT_NEAR(loss.total, traj[k]["loss"]["total"].get<double>(), k == 0 ? 1e-4 : 1e-3);
      for (const MoeLayerStats& st : model.moe_stats()) {
        EXPECT_EQ(st.load, traj[k]["load"][std::to_string(st.layer)].get<std::vector<int64_t>>())
            << "layer " << st.layer;
      }
      if (k >= 1) {
        // Parameters p_k: 1-D tensors and routers dense, others sampled.
        int64_t total = 0, within = 0;
        for (const auto& [name, e] : traj[k]["params"].items()) {
          SCOPED_TRACE(name);
          const ParamInfo* i = p.Find(name);
          ASSERT_NE(i, nullptr);
          const float* v = p.values() + i->offset;
          std::vector<int64_t> idx;
          std::vector<float> want;
          if (e["storage"] == "sample") {
            for (int32_t j : ref.Array<int32_t>(e["flat_indices"])) idx.push_back(j);
            want = ref.Array<float>(e["values"]);
          } else {
            want = ref.Dense(e);
            for (int64_t j = 0; j < i->numel; ++j) idx.push_back(j);
          }
          for (size_t j = 0; j < idx.size(); ++j) {
            const double err = std::fabs(static_cast<double>(v[idx[j]]) - want[j]);
            if (k == 1) {
              // Within 1e-6 where the step-0 gradient is well above its float32 noise (or the
              // element's embedding row is unused), else within 2 lr.
              const float g = g0[i->offset + idx[j]];
              bool zero_row = false;
              if (i->shape.size() == 2 && g == 0) {
                const int64_t cols = i->shape[1], r = idx[j] / cols;
                zero_row = true;
                for (int64_t c = 0; c < cols; ++c) zero_row &= g0[i->offset + r * cols + c] == 0;
              }
              const double tol = (std::fabs(g) >= 1e-5 || zero_row) ? 1e-6 : 2 * lr;
              EXPECT_LE(err, tol) << "element " << idx[j] << " grad " << g;
            } else {
              EXPECT_LE(err, 2.5e-3) << "element " << idx[j];
              ++total;
              within += err <= 1e-5;
            }
          }
        }
        if (k >= 2) EXPECT_GE(within, 0.999 * total);
      }
      if (k + 1 == traj.size()) break;
      p.ZeroGrads();
      model.Backward();
      if (k == 0) g0.assign(p.grads(), p.grads() + p.buffer_size());
      opt.Step(p, lr);
      UpdateRoutingBiases(p, model.moe_stats(), gamma);
      const Json& bu = ref.json()["bias_updates"];
      if (!bu.is_null() && k < bu.size()) {
        for (const auto& [name, e] : bu[k].items()) {
          const std::vector<float>* b = p.bias(name);
          ASSERT_NE(b, nullptr) << name;
          const std::vector<float> want = e["after"].get<std::vector<float>>();
          ASSERT_EQ(want.size(), b->size());
          EXPECT_EQ(std::memcmp(want.data(), b->data(), want.size() * 4), 0) << name;
        }
      }
    }
  }
}

}  // namespace
}  // namespace dsv3::train
