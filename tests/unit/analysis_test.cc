// The co-design analyzer on small configs computed by hand (the working is in the comments),
// one per family, and every kind of bad config and option.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "analysis/arch.h"
#include "analysis/comm.h"
#include "analysis/compute.h"
#include "analysis/memory.h"
#include "analysis/plot.h"
#include "analysis/report.h"
#include "core/error.h"
#include "tests/test_util.h"

namespace dsv3::analysis {
namespace {

using test::ErrorMessage;

std::string ConfigError(const Json& config) {
  return ErrorMessage([&] { ArchFromJson(config, "config.json"); });
}

// Llama, GQA: hidden 16, 2 layers, 4 heads of head_dim 16 / 4 = 4, 2 KV heads, MLP width 32,
// vocabulary 10.
Json TinyLlama() {
  return {{"model_type", "llama"},    {"hidden_size", 16},        {"num_hidden_layers", 2},
          {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 32},
          {"vocab_size", 10}};
}

TEST(AnalysisGqa, LlamaByHand) {
  const Arch a = ArchFromJson(TinyLlama(), "dir/tiny-llama.json");
  EXPECT_EQ(a.name, "tiny-llama");
  EXPECT_EQ(a.AttentionLabel(), "GQA (2 KV heads)");
  // KV: K and V x 2 layers x 2 KV heads x 4 head_dim x 2 bytes.
  EXPECT_EQ(KvCacheBytesPerToken(a, 2), 2 * 2 * 2 * 4 * 2);
  EXPECT_EQ(KvCacheBytesPerToken(a, 2), 64);
  EXPECT_EQ(KvCacheBytes(a, 1, 100, 3), 32 * 100 * 3);
  // Per layer: norms 2 x 16 = 32; q [16, 16] 256; k, v [8, 16] 128 each; o [16, 16] 256;
  // gate, up [32, 16] and down [16, 32] 512 each = 1536. Sum 2336.
  // Total: embedding 10 x 16 = 160, 2 layers 4672, final norm 16, lm_head 160 = 5008.
  EXPECT_EQ(a.params.total, 5008);
  EXPECT_EQ(a.params.embedding, 160);
  EXPECT_EQ(a.params.activated_with_embedding, 5008);
  EXPECT_EQ(a.params.activated, 4848);
  // Training, seq 8: 6 x 4848 = 29088; attention 6 x 2 layers x 4 heads x (4 + 4) x 8/2 = 1536.
  const TrainingFlops t = TrainingFlopsPerToken(a, 8);
  EXPECT_DOUBLE_EQ(t.weights, 29088);
  EXPECT_DOUBLE_EQ(t.attention, 1536);
  EXPECT_DOUBLE_EQ(t.total, 30624);
  // The paper's approximation: 72 x 2 x 16^2 + 6 x 10 x 16 = 36864 + 960.
  EXPECT_DOUBLE_EQ(t.paper_dense_approximation, 37824);
  // Decode at context 8: 2 x 4848 + 2 x 2 x 4 x (4 + 4) x 8 = 9696 + 1024; GQA has no absorbed
  // form, so both counts agree.
  const DecodeFlops d = DecodeFlopsPerToken(a, 8);
  EXPECT_DOUBLE_EQ(d.total, 10720);
  EXPECT_DOUBLE_EQ(d.total_absorbed, 10720);
}

TEST(AnalysisGqa, WeightBytesPerFormat) {
  const Arch a = ArchFromJson(TinyLlama(), "tiny.json");
  // Seven linears per layer: q [16,16], k [8,16], v [8,16], o [16,16], gate [32,16], up [32,16],
  // down [16,32]: 2304 weights in 128 rows. 16-bit in every format: the two norms of a layer
  // (32 values, 64 B), and outside the layers embedding 160, final norm 16, lm_head 160 (672 B).
  const int64_t half_fixed = 2 * (160 + 16 + 160);
  EXPECT_EQ(CountWeightBytes(a, WeightFormat::kBf16, 128).total, 2 * 5008);
  // fp8: 1 byte per weight + one 4-byte scale per 128x128 block; every linear fits one block.
  // Per layer 2304 + 7 x 4 + 64 = 2396.
  EXPECT_EQ(CountWeightBytes(a, WeightFormat::kFp8, 128).total, 2 * 2396 + half_fixed);
  // int8, groups of 128 along a row (each row is one group): 1 byte per weight + 2 bytes per
  // row. Per layer 2304 + 256 + 64 = 2624.
  EXPECT_EQ(CountWeightBytes(a, WeightFormat::kInt8, 128).total, 2 * 2624 + half_fixed);
  // int4: half a byte per weight + 2 bytes per row: 1152 + 256 + 64 = 1472 per layer.
  EXPECT_EQ(CountWeightBytes(a, WeightFormat::kInt4, 128).total, 2 * 1472 + half_fixed);
  // int4 with groups of 8: rows of 16 have 2 groups, the 16 rows of down (32 wide) 4. Scales per
  // layer: (16 + 8 + 8 + 16 + 32 + 32) x 2 groups x 2 B + 16 x 4 x 2 B = 448 + 128 = 576.
  EXPECT_EQ(CountWeightBytes(a, WeightFormat::kInt4, 8).total, 2 * (1152 + 576 + 64) + half_fixed);
  // Read per token (bf16): everything but the embedding table, plus one 16-value row.
  EXPECT_EQ(CountWeightBytes(a, WeightFormat::kBf16, 128).per_token, 2 * 4848 + 2 * 16);
}

TEST(AnalysisGqa, TiedEmbeddingIsTheHead) {
  Json c = TinyLlama();
  c["tie_word_embeddings"] = true;
  const Arch a = ArchFromJson(c, "tied.json");
  EXPECT_EQ(a.params.total, 5008 - 160);      // no separate lm_head
  EXPECT_EQ(a.params.activated, 5008 - 160);  // the embedding is multiplied with as the head
  EXPECT_EQ(CountWeightBytes(a, WeightFormat::kBf16, 128).per_token, 2 * (5008 - 160));
}

TEST(AnalysisGqa, DefaultsAndBiases) {
  Json c = TinyLlama();
  c.erase("num_key_value_heads");  // Llama falls back to MHA
  const Arch mha = ArchFromJson(c, "mha.json");
  EXPECT_EQ(mha.AttentionLabel(), "MHA");
  EXPECT_EQ(KvCacheBytesPerToken(mha, 2), 2 * 2 * 4 * 4 * 2);
  c = TinyLlama();
  c["head_dim"] = 8;  // explicit head_dim overrides hidden / heads
  EXPECT_EQ(KvCacheBytesPerToken(ArchFromJson(c, "hd.json"), 2), 2 * 2 * 2 * 8 * 2);
  // Qwen2: biases on q (16), k (8) and v (8): 32 more per layer.
  c = TinyLlama();
  c["model_type"] = "qwen2";
  EXPECT_EQ(ArchFromJson(c, "qwen.json").params.total, 5008 + 2 * 32);
  // Llama with attention_bias: q, k, v and o (16): 48 per layer; mlp_bias: 32 + 32 + 16.
  c = TinyLlama();
  c["attention_bias"] = true;
  c["mlp_bias"] = true;
  EXPECT_EQ(ArchFromJson(c, "bias.json").params.total, 5008 + 2 * (48 + 80));
}

// Mixtral: the tiny Llama's attention, 4 experts of width 8, 2 per token.
TEST(AnalysisGqa, MixtralByHand) {
  Json c = TinyLlama();
  c["model_type"] = "mixtral";
  c["intermediate_size"] = 8;
  c["num_local_experts"] = 4;
  c["num_experts_per_tok"] = 2;
  const Arch a = ArchFromJson(c, "moe.json");
  // Per layer: norms 32, attention 256 + 128 + 128 + 256 = 768, router [4, 16] 64,
  // experts 4 x 3 x 16 x 8 = 1536. Sum 2400. Total 160 + 4800 + 16 + 160 = 5136.
  EXPECT_EQ(a.params.total, 5136);
  // Unselected: 2 layers x 2 experts x 384.
  EXPECT_EQ(a.params.activated_with_embedding, 5136 - 1536);
  EXPECT_EQ(a.params.activated, 5136 - 1536 - 160);
  const EpOptions o = EpDefaultsFor(a);
  EXPECT_EQ(o.fan_out, 2);  // no shared experts
  EXPECT_EQ(o.layers, 2);
  EXPECT_EQ(o.hidden, 16);
}

TEST(AnalysisGqa, MistralSlidingWindow) {
  Json c = TinyLlama();
  c["model_type"] = "mistral";
  c["sliding_window"] = 6;
  const Arch a = ArchFromJson(c, "window.json");
  EXPECT_EQ(KvCachedTokens(a, 4), 4);
  EXPECT_EQ(KvCachedTokens(a, 10), 6);
  EXPECT_EQ(KvCacheBytes(a, 2, 10, 3), 64 * 6 * 3);
  EXPECT_EQ(DecodeFlopsPerToken(a, 10).attended, 6);
  // Training, seq 8, window 6: positions 1..6 attend to 1..6 (continuous: 6^2/2 = 18), positions
  // 7 and 8 to 6 each (12): (18 + 12) / 8 = 3.75 on average.
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(a, 8).attended, 3.75);
}

// DeepSeek-V3 layout: hidden 32, 2 layers (layer 0 dense, layer 1 MoE), 2 heads, no q_lora,
// kv_lora 8, qk 4 + 2 (nope + rope), v 4, dense width 64, 4 routed experts of width 8 (2 per
// token) + 1 shared, vocabulary 20, one MTP module.
Json TinyDeepSeek() {
  return {{"model_type", "deepseek_v3"},
          {"hidden_size", 32},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 2},
          {"q_lora_rank", nullptr},
          {"kv_lora_rank", 8},
          {"qk_nope_head_dim", 4},
          {"qk_rope_head_dim", 2},
          {"v_head_dim", 4},
          {"intermediate_size", 64},
          {"moe_intermediate_size", 8},
          {"n_routed_experts", 4},
          {"num_experts_per_tok", 2},
          {"n_shared_experts", 1},
          {"n_group", 1},
          {"topk_group", 1},
          {"first_k_dense_replace", 1},
          {"vocab_size", 20},
          {"max_position_embeddings", 64},
          {"num_nextn_predict_layers", 1}};
}

TEST(AnalysisDeepSeek, ByHand) {
  const Arch a = ArchFromJson(TinyDeepSeek(), "tiny-v3.json");
  EXPECT_EQ(a.AttentionLabel(), "MLA");
  // KV: 2 layers x (8 + 2) x 2 bytes; the MTP module's own cache: 1 x 10 x 2.
  EXPECT_EQ(KvCacheBytesPerToken(a, 2), 40);
  EXPECT_EQ(MtpKvCacheBytesPerToken(a, 2), 20);
  // Attention per layer: norms 2 x 32 = 64, q_proj [2 x 6, 32] 384, kv_a [10, 32] 320,
  // kv_a_layernorm 8, kv_b [2 x 8, 8] 128, o [32, 2 x 4] 256: 1160.
  // Layer 0 (dense): 1160 + 3 x 32 x 64 = 7304.
  // Layer 1 (MoE): 1160 + router [4, 32] 128 + correction bias 4 + 4 experts x 768 + shared 768
  // = 5132. Total: embedding 640 + 7304 + 5132 + norm 32 + lm_head 640 = 13748.
  EXPECT_EQ(a.params.total, 13748);
  EXPECT_EQ(a.params.activated_with_embedding, 13748 - 2 * 768);
  EXPECT_EQ(a.params.activated, 13748 - 2 * 768 - 640);
  // MTP module: embedding copy 640, enorm + hnorm 64, eh_proj [32, 64] 2048, a MoE block like
  // layer 1 (5132), shared_head.norm 32, head copy 640 = 8556.
  const MtpParams m = CountMtpParams(a);
  EXPECT_EQ(m.stored, 8556);
  EXPECT_EQ(m.block, 5132);
  EXPECT_EQ(m.projection, 2048);
  EXPECT_EQ(m.norms, 96);
  EXPECT_EQ(m.embedding_copy, 640);
  EXPECT_EQ(m.head_copy, 640);
  EXPECT_EQ(a.params.mtp, 8556);
  // A draft: all but the embedding copy and 2 unselected experts.
  EXPECT_EQ(m.activated_per_draft, 8556 - 640 - 2 * 768);
  EXPECT_DOUBLE_EQ(MtpDraftCostEstimate(a), 6380.0 / 11572.0);
  // Training, seq 8: 6 x 11572 + 6 x 2 layers x 2 heads x (6 + 4) x 4 = 69432 + 960.
  EXPECT_DOUBLE_EQ(TrainingFlopsPerToken(a, 8).total, 70392);
  // Decode, context 8: 2 x 11572 + 2 x 2 x 2 x 10 x 8 = 23144 + 640; absorbed attention
  // 2 x 2 x 2 x (2 x 8 + 2) x 8 = 1152.
  const DecodeFlops d = DecodeFlopsPerToken(a, 8);
  EXPECT_DOUBLE_EQ(d.total, 23784);
  EXPECT_DOUBLE_EQ(d.attention_absorbed, 1152);
  EXPECT_DOUBLE_EQ(d.total_absorbed, 23144 + 1152);
}

TEST(AnalysisDeepSeek, WeightBytesByHand) {
  const Arch a = ArchFromJson(TinyDeepSeek(), "tiny-v3.json");
  EXPECT_EQ(a.stored_format, "bf16");  // no quantization_config
  // bf16: 2 bytes per value, except the routing bias kept float32 (4 values, 2 bytes more each).
  EXPECT_EQ(CountWeightBytes(a, WeightFormat::kBf16, 128).total, 2 * 13748 + 2 * 4);
  // fp8 (128x128 blocks: one scale per linear):
  // layer 0: linears q 384, kv_a 320, kv_b 128, o 256, gate 2048, up 2048, down 2048 = 7232
  //   + 7 scales x 4 = 28; norms 72 values x 2 = 144: 7404.
  // layer 1: attention linears 1088 + 16; norms 144; router 128 x 2 = 256; bias 16;
  //   15 expert linears (4 routed + 1 shared, 3 each) of 256 + 4: 3900. Sum 5420.
  // Main: embedding 1280 + 7404 + 5420 + norm 64 + lm_head 1280 = 15448.
  const WeightBytes fp8 = CountWeightBytes(a, WeightFormat::kFp8, 128);
  EXPECT_EQ(fp8.total, 15448);
  // Per token: no embedding table but one row (64), 2 unselected experts (2 x 780) fewer.
  EXPECT_EQ(fp8.per_token, 15448 - 1280 + 64 - 2 * 780);
}

TEST(AnalysisDecodeBound, ByHand) {
  const Arch a = ArchFromJson(TinyLlama(), "tiny.json");
  // 1000 B/s and 1000 FLOP/s. Bytes per token at context 8: weights (bf16) 9728 + KV 64 x 8.
  const Machine m{"slow", 1e-6, 1e-9, ""};
  const DecodeBound b = DecodeBoundFor(a, m, WeightFormat::kBf16, 128, 2, 8);
  EXPECT_EQ(b.weight_bytes, 9728);
  EXPECT_EQ(b.kv_bytes, 512);
  EXPECT_DOUBLE_EQ(b.memory_tokens_per_s, 1000.0 / 10240.0);
  EXPECT_DOUBLE_EQ(b.compute_tokens_per_s, 1000.0 / 10720.0);
  EXPECT_STREQ(b.bound_by, "compute");
  EXPECT_DOUBLE_EQ(b.tokens_per_s, 1000.0 / 10720.0);
  // Without a FLOP rate only memory bounds.
  const DecodeBound mem = DecodeBoundFor(a, {"bw", 1e-6, 0, ""}, WeightFormat::kBf16, 128, 2, 8);
  EXPECT_STREQ(mem.bound_by, "memory");
  EXPECT_EQ(mem.compute_tokens_per_s, 0);
  EXPECT_EQ(FindMachine("h800").name, "h800");
}

TEST(AnalysisComm, ExpertParallelByHand) {
  EpOptions o;
  o.hidden = 100;
  o.tokens_per_device = 4;
  o.fan_out = 5;
  o.layers = 3;
  o.micro_batches = 2;
  o.bandwidth_gbs = 1e-3;  // 1e6 B/s
  // Round: (1 + 2) x 4 x 5 x 100 = 6000 B at 1e6 B/s = 6000 us; layer 12000 us; TPOT 36 ms.
  const EpResult r = ExpertParallelDecode(o);
  EXPECT_DOUBLE_EQ(r.bytes_per_round, 6000);
  EXPECT_NEAR(r.comm_us_per_round, 6000, 1e-9);
  EXPECT_NEAR(r.us_per_layer, 12000, 1e-9);
  EXPECT_NEAR(r.tpot_ms, 36, 1e-9);
  EXPECT_NEAR(r.tokens_per_s, 1000.0 / 36, 1e-9);
}

TEST(AnalysisComm, MtpByHand) {
  // One draft accepted 85 % of the time, free drafts: 1.85 tokens per step.
  EXPECT_DOUBLE_EQ(MtpSpeedup({0.85, 1, 0}).tokens_per_step, 1.85);
  // Two drafts at 0.5: 1 + 0.5 + 0.25 tokens, step cost 1 + 2 x 0.25: speedup 1.75 / 1.5.
  const MtpResult r = MtpSpeedup({0.5, 2, 0.25});
  EXPECT_DOUBLE_EQ(r.tokens_per_step, 1.75);
  EXPECT_DOUBLE_EQ(r.step_cost, 1.5);
  EXPECT_DOUBLE_EQ(r.speedup, 1.75 / 1.5);
  EXPECT_DOUBLE_EQ(MtpSpeedup({0, 1, 0.1}).speedup, 1 / 1.1);  // never accepted: a slowdown
}

TEST(AnalysisReport, JsonCarriesTheFigures) {
  const std::vector<Arch> archs = {ArchFromJson(TinyDeepSeek(), "a.json"),
                                   ArchFromJson(TinyLlama(), "b.json")};
  AnalyzeOptions o;
  o.seq_len = 8;
  o.context = 8;
  const Json j = AnalyzeJson(archs, o);
  ASSERT_EQ(j["configs"].size(), 2u);
  const Json& v3 = j["configs"][0];
  EXPECT_EQ(v3["kv_cache_bytes_per_token"], 40);
  EXPECT_EQ(v3["params_total"], 13748);
  EXPECT_EQ(v3["params_activated"], 11572);
  EXPECT_EQ(v3["train_flops_per_token"], 70392.0);
  EXPECT_EQ(v3["mtp"]["params_stored"], 8556);
  EXPECT_EQ(j["configs"][1]["kv_cache"]["bytes"]["bf16"], 64 * 8);
  EXPECT_FALSE(j["configs"][1].contains("mtp"));
  // Text: the side-by-side table names both and shows the KV figures.
  const std::string text = AnalyzeText(archs, o);
  EXPECT_NE(text.find("KV cache per token, bf16 (B)"), std::string::npos) << text;
  EXPECT_NE(text.find("1.60x"), std::string::npos) << text;  // 64 / 40
}

TEST(AnalysisReport, Formatting) {
  EXPECT_EQ(Grouped(70272), "70,272");
  EXPECT_EQ(Grouped(-1234567), "-1,234,567");
  EXPECT_EQ(Grouped(999), "999");
  EXPECT_EQ(Billions(671026419200.0), "671.03 B");
  EXPECT_EQ(DecimalBytes(287834112), "287.83 MB");
  EXPECT_EQ(DecimalBytes(512), "512 B");
}

TEST(AnalysisPlot, ScriptHoldsTheCurves) {
  Json w = TinyLlama();
  w["model_type"] = "mistral";
  w["sliding_window"] = 6;
  const std::vector<Arch> archs = {ArchFromJson(TinyLlama(), "it's.json"),
                                   ArchFromJson(w, "window.json")};
  PlotOptions o;
  o.max_context = 64;
  o.batch = 2;
  const std::string s = KvPlotScript(archs, o, "svg", "out.svg");
  // x = 10: 64 B x 10 tokens x 2 sequences = 1280 B; the windowed one holds 6 tokens: 768 B.
  EXPECT_NE(s.find("\n10 1.28e-06 7.68e-07\n"), std::string::npos) << s;
  EXPECT_NE(s.find("\n6 7.68e-07 7.68e-07\n"), std::string::npos) << s;
  EXPECT_NE(s.find("title 'it''s (GQA (2 KV heads), 64 B/token)'"), std::string::npos) << s;
  EXPECT_NE(s.find("set output 'out.svg'"), std::string::npos);
}

// Two runs' train_log.jsonl as src/train/trainer.cc writes them: step lines, validation lines.
TEST(AnalysisLossPlot, ScriptHoldsBothRuns) {
  const test::TempDir tmp;
  std::filesystem::create_directories(tmp / "fp8");
  test::WriteFile(tmp / "fp8/train_log.jsonl",
                  "{\"step\":1,\"loss\":9.5,\"ce\":9.25,\"mtp_ce\":9.5,\"balance\":0.001,"
                  "\"lr\":0.001}\n"
                  "{\"step\":2,\"loss\":8.5,\"ce\":8.125,\"mtp_ce\":8.5,\"balance\":0.001,"
                  "\"lr\":0.002}\n"
                  "\n"
                  "{\"step\":2,\"valid_ce\":8.0625,\"valid_ppl\":3176.3}\n");
  test::WriteFile(tmp / "b.jsonl", "{\"step\":1,\"ce\":7.5}\n{\"step\":2,\"ce\":7}\n");
  const std::vector<LossLog> logs = {ReadLossLog(tmp / "fp8/train_log.jsonl", ""),
                                     ReadLossLog(tmp / "b.jsonl", "bf16 it's")};
  EXPECT_EQ(logs[0].label, "fp8");  // the folder name
  ASSERT_EQ(logs[0].train.size(), 2u);
  ASSERT_EQ(logs[0].valid.size(), 1u);
  EXPECT_TRUE(logs[1].valid.empty());
  const std::string s = LossPlotScript(logs, "svg", "loss.svg");
  EXPECT_NE(s.find("set output 'loss.svg'"), std::string::npos) << s;
  // The data inline: main CE by step, validation CE by step.
  EXPECT_NE(s.find("$train0 << EOD\n1 9.25\n2 8.125\nEOD\n"), std::string::npos) << s;
  EXPECT_NE(s.find("$valid0 << EOD\n2 8.0625\nEOD\n"), std::string::npos) << s;
  EXPECT_NE(s.find("$train1 << EOD\n1 7.5\n2 7\nEOD\n"), std::string::npos) << s;
  EXPECT_EQ(s.find("$valid1"), std::string::npos) << s;  // no validation lines, no series
  // The series, one color per log, the labels quoted.
  EXPECT_NE(s.find("$train0 using 1:2 with lines linewidth 1 linecolor rgb '#1f77b4' title "
                   "'fp8 train CE'"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find("$valid0 using 1:2 with linespoints"), std::string::npos) << s;
  EXPECT_NE(s.find("rgb '#1f77b4' title 'fp8 valid CE'"), std::string::npos) << s;
  EXPECT_NE(s.find("rgb '#d62728' title 'bf16 it''s train CE'"), std::string::npos) << s;
  EXPECT_NE(s.find("set ylabel 'loss (nats/token)'"), std::string::npos) << s;
}

TEST(AnalysisLossPlot, MovingAverageOverOnePercent) {
  EXPECT_EQ(SmoothingWindow(1), 1);
  EXPECT_EQ(SmoothingWindow(199), 1);
  EXPECT_EQ(SmoothingWindow(1000), 11);
  // 400 steps: a window of 5. ce = step, so the centered mean is the step itself inside; the
  // windows at the ends average what there is: step 1 (1 + 2 + 3) / 3, step 400 (398 + 399 + 400)
  // / 3.
  LossLog log;
  log.label = "run";
  for (int64_t step = 1; step <= 400; ++step) log.train.emplace_back(step, step);
  const std::string s = LossPlotScript({log}, "svg", "x.svg");
  EXPECT_NE(s.find("\n1 2\n2 2.5\n3 3\n4 4\n"), std::string::npos) << s.substr(0, 400);
  EXPECT_NE(s.find("\n399 398.5\n400 399\nEOD"), std::string::npos);
  EXPECT_NE(s.find("'run train CE (moving mean of 5 steps)'"), std::string::npos);
}

TEST(AnalysisLossPlot, BadLogsNameTheFileAndLine) {
  const test::TempDir tmp;
  const auto error = [](const std::string& path) {
    return ErrorMessage([&] { ReadLossLog(path, ""); });
  };
  EXPECT_NE(error(tmp / "missing.jsonl").find("missing.jsonl: cannot open"), std::string::npos);
  test::WriteFile(tmp / "bad.jsonl", "{\"step\":1,\"ce\":2}\nnot json\n");
  EXPECT_NE(error(tmp / "bad.jsonl").find("bad.jsonl:2: invalid JSON"), std::string::npos)
      << error(tmp / "bad.jsonl");
  test::WriteFile(tmp / "array.jsonl", "[1, 2]\n");
  EXPECT_NE(error(tmp / "array.jsonl").find("array.jsonl:1: expected a JSON object"),
            std::string::npos);
  test::WriteFile(tmp / "null.jsonl", "{\"step\":1,\"ce\":null}\n");
  EXPECT_NE(error(tmp / "null.jsonl").find("null.jsonl:1: 'ce' is not a number"),
            std::string::npos);
  test::WriteFile(tmp / "valid.jsonl", "{\"step\":1,\"valid_ce\":2}\n");
  EXPECT_NE(error(tmp / "valid.jsonl").find("valid.jsonl: no training step lines"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([&] {
              PlotLossCurves({tmp / "bad.jsonl"}, {"a", "b"}, tmp / "x.svg");
            }).find("2 --label for 1 --plot"),
            std::string::npos);
}

// ---- bad input ----------------------------------------------------------------------------------

TEST(AnalysisErrors, UnsupportedOrMissingFamily) {
  EXPECT_NE(ConfigError({{"model_type", "gpt2"}}).find("'gpt2'"), std::string::npos);
  EXPECT_NE(ConfigError({{"model_type", "gpt2"}}).find("supported: deepseek_v2"),
            std::string::npos);
  EXPECT_NE(ConfigError({{"hidden_size", 16}}).find("'model_type' is missing"), std::string::npos);
  EXPECT_NE(ConfigError(Json::array()).find("expected a JSON object"), std::string::npos);
}

TEST(AnalysisErrors, MissingFieldsAreNamed) {
  for (const char* field : {"hidden_size", "num_hidden_layers", "num_attention_heads",
                            "intermediate_size", "vocab_size"}) {
    Json c = TinyLlama();
    c.erase(field);
    EXPECT_NE(ConfigError(c).find(std::string("required field '") + field + "' is missing"),
              std::string::npos)
        << field << ": " << ConfigError(c);
  }
  Json c = TinyLlama();
  c["model_type"] = "mistral";
  c.erase("num_key_value_heads");
  EXPECT_NE(ConfigError(c).find("'num_key_value_heads' is missing"), std::string::npos);
  c = TinyLlama();
  c["model_type"] = "mixtral";
  EXPECT_NE(ConfigError(c).find("'num_local_experts' is missing"), std::string::npos);
  c = TinyDeepSeek();
  c.erase("kv_lora_rank");
  EXPECT_NE(ConfigError(c).find("'kv_lora_rank' is missing"), std::string::npos);
}

TEST(AnalysisErrors, NonsenseValues) {
  for (const Json& base : {TinyLlama(), TinyDeepSeek()}) {
    Json c = base;
    c["num_hidden_layers"] = -3;
    EXPECT_NE(ConfigError(c).find("'num_hidden_layers' must be"), std::string::npos)
        << ConfigError(c);
    c = base;
    c["num_attention_heads"] = 0;
    EXPECT_NE(ConfigError(c).find("'num_attention_heads' must be"), std::string::npos)
        << ConfigError(c);
    c = base;
    c["hidden_size"] = "big";
    EXPECT_NE(ConfigError(c).find("'hidden_size' must be an integer"), std::string::npos);
  }
  Json c = TinyLlama();
  c["num_key_value_heads"] = 3;
  EXPECT_NE(ConfigError(c).find("multiple of num_key_value_heads (3)"), std::string::npos);
  c["num_key_value_heads"] = 8;  // more KV heads than heads
  EXPECT_NE(ConfigError(c).find("'num_key_value_heads' must be"), std::string::npos);
  c = TinyLlama();
  c["hidden_size"] = 18;  // not a multiple of 4 heads, no head_dim
  EXPECT_NE(ConfigError(c).find("'head_dim' is missing"), std::string::npos);
  c = TinyLlama();
  c["model_type"] = "qwen2";
  c["use_sliding_window"] = true;
  EXPECT_NE(ConfigError(c).find("use_sliding_window"), std::string::npos);
  c = TinyLlama();
  c["model_type"] = "mixtral";
  c["num_local_experts"] = 4;
  c["num_experts_per_tok"] = 5;
  EXPECT_NE(ConfigError(c).find("'num_experts_per_tok' must be"), std::string::npos);
}

TEST(AnalysisErrors, Files) {
  EXPECT_NE(ErrorMessage([] { LoadArch("/nonexistent/x.json"); }).find("/nonexistent/x.json"),
            std::string::npos);
  const test::TempDir tmp;
  EXPECT_NE(ErrorMessage([&] { LoadArch(tmp.path()); }).find("config.json: missing"),
            std::string::npos);
  test::WriteFile(tmp / "config.json", "{\"model_type\": ");
  EXPECT_NE(ErrorMessage([&] { LoadArch(tmp.path()); }).find("invalid JSON"), std::string::npos);
}

TEST(AnalysisErrors, Options) {
  AnalyzeOptions o;
  o.context = 0;
  EXPECT_NE(ErrorMessage([&] { ValidateAnalyzeOptions(o); }).find("--context"), std::string::npos);
  o = {};
  o.kv_dtype = "int2";
  EXPECT_NE(ErrorMessage([&] { ValidateAnalyzeOptions(o); }).find("'int2'"), std::string::npos);
  o = {};
  o.mtp_acceptance = 1.5;
  EXPECT_NE(ErrorMessage([&] { ValidateAnalyzeOptions(o); }).find("--acceptance"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([] { ParseWeightFormat("fp4"); }).find("'fp4'"), std::string::npos);
  EXPECT_NE(ErrorMessage([] { FindMachine("abacus"); }).find("h800"), std::string::npos);
  EXPECT_NE(ErrorMessage([] { FindInterconnect("carrier-pigeon"); }).find("ib-400g"),
            std::string::npos);
  const Arch dense = ArchFromJson(TinyLlama(), "dense.json");
  EXPECT_NE(ErrorMessage([&] { EpDefaultsFor(dense); }).find("dense model"), std::string::npos);
  EpOptions e;
  e.hidden = 1;
  e.fan_out = 1;
  e.layers = 1;
  EXPECT_NE(ErrorMessage([&] { ExpertParallelDecode(e); }).find("--bandwidth-gbs"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([] { MtpSpeedup({0.5, 0, 0}); }).find("--depth"), std::string::npos);
  EXPECT_NE(
      ErrorMessage([&] { KvCacheBytes(dense, 2, int64_t{1} << 62, 1 << 20); }).find("too large"),
      std::string::npos);
}

}  // namespace
}  // namespace dsv3::analysis
