// The dsv3 subcommands, callable from main() after argument parsing.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/mla.h"
#include "model/model.h"
#include "model/synth.h"
#include "runtime/bench.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::cli {

struct InfoArgs {
  std::string model_dir;
  bool json = false;
};
struct LogitsArgs {
  std::string model_dir, ids, output;
  bool decode = false;
  bool mtp = false;  // write the MTP module's logits instead
  AttentionImpl attention = AttentionImpl::kAuto;
  KvCacheType kv_cache = KvCacheType::kF32;
  kernels::MatMulPrecision matmul = kernels::MatMulPrecision::kF32;
  LoadOptions load;
};
struct GenerateArgs {
  std::string model_dir, ids;
  bool text = false;      // text mode (-p)
  std::string prompt;     // text mode: the prompt, chat-templated unless raw
  std::string system;     // text mode: an optional system message
  std::string tokenizer;  // tokenizer.json or its folder; default: the model folder
  bool raw = false;
  std::vector<std::string> stop;
  int64_t n = 32;
  int64_t ctx_size = 0;  // 0: prompt + n
  bool ignore_eos = false;
  bool json = false;  // one JSON object on stdout at the end instead of streamed output
  SamplingParams sampling;
  bool no_mtp = false;  // plain decoding even when the checkpoint has an MTP module
  int64_t draft = 1;    // MTP draft tokens per step
  KvCacheType kv_cache = KvCacheType::kF32;
  kernels::MatMulPrecision matmul = kernels::MatMulPrecision::kF32;
  LoadOptions load;
};

struct BenchArgs {
  std::string model_dir;
  std::string threads;  // "1,2": one run per count; empty: all CPUs
  bool json = false;
  int64_t draft = 1;
  bool no_mtp = false;
  bool ep_report = false;  // under mpirun: the expert-parallel exchange per decode step
  BenchOptions options;
  LoadOptions load;
};
struct ChatArgs {
  std::string model_dir, tokenizer, system;
  std::vector<std::string> stop;
  int64_t n = 1024;      // most new tokens per reply
  int64_t ctx_size = 0;  // 0: min(max_position_embeddings, 8192)
  SamplingParams sampling;
  bool no_mtp = false;
  int64_t draft = 1;
  KvCacheType kv_cache = KvCacheType::kF32;
  kernels::MatMulPrecision matmul = kernels::MatMulPrecision::kF32;
  LoadOptions load;
};
struct TokenizeArgs {
  std::string tokenizer;
  bool jsonl = false;
  std::string text, file;  // -p TEXT or --file FILE instead of --jsonl
  bool add_special_tokens = false;
  int bench = 0;  // with --file: time this many encodes, print throughput instead of ids
};
struct DetokenizeArgs {
  std::string tokenizer, ids;
  bool jsonl = false;
  bool skip_special_tokens = false;
};
struct ChatTemplateArgs {
  std::string model_dir;  // a model folder or a tokenizer.json with its tokenizer_config.json
  bool jsonl = false;
};

// "3.58 GiB": bytes in binary units.
std::string Human(double bytes);

int RunInfo(const InfoArgs& a);
int RunBench(const BenchArgs& a);
int RunLogits(const LogitsArgs& a);
int RunGenerate(const GenerateArgs& a);
int RunSynth(const SynthOptions& a, const std::string& tokenizer);
int RunTokenize(const TokenizeArgs& a);
int RunDetokenize(const DetokenizeArgs& a);
int RunChatTemplate(const ChatTemplateArgs& a);
int RunChat(const ChatArgs& a);
int RunGenerateText(const GenerateArgs& a);  // generate with -p

// synth --tokenizer: copies the tokenizer files into the checkpoint and sizes vocab_size and the
// BOS/EOS ids to match (as --set overrides that an explicit --set still replaces).
void AddTokenizerToSynth(const std::string& tokenizer, SynthOptions* options);
// A model's tokenizer: `tokenizer` (a tokenizer.json or its folder) if given, else the one in the
// model folder.
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& tokenizer, const std::string& model);
// Fails unless every id of the tokenizer is below the model's vocab_size.
void CheckVocab(const Tokenizer& tok, const Config& c);
// Loads a model, printing load time and unused-tensor warnings on stderr.
// `matmul` is only reported (the contexts built later run at it).
std::unique_ptr<Model> LoadModel(const std::string& dir, bool quiet = false,
                                 kernels::MatMulPrecision matmul = kernels::MatMulPrecision::kF32,
                                 const LoadOptions& load = {});
double Seconds(std::chrono::steady_clock::time_point since);
// A context for `a.n` new tokens after `prompt_tokens` (checks max_position_embeddings; the
// cache holds a.ctx_size tokens, or what generation needs), and the MTP speculative decoder when
// the checkpoint has an MTP module and --no-mtp is not given.
struct Generation {
  std::unique_ptr<Context> context;
  std::unique_ptr<SpeculativeDecoder> speculative;
};
Generation SetUpGeneration(const Model& m, const GenerateArgs& a, size_t prompt_tokens);
// Whether to decode speculatively; notes on stderr when the config promises MTP layers that the
// checkpoint lacks.
bool UseMtp(const Model& m, bool no_mtp);
// prefill / decode tokens/s, KV-cache bytes per token and MTP acceptance, on stderr.
void PrintGenerateStats(const GenerateStats& stats, const Context& ctx);
std::string MtpSummary(const GenerateStats& stats);
// generate --json: the generated ids (and text, when given) with the statistics PrintGenerateStats
// shows, as one JSON object on stdout.
void PrintGenerateJson(const GenerateStats& stats, const Context& ctx,
                       const std::vector<int32_t>& tokens, const std::string* text);

// "1,2,3" -> {1, 2, 3}; throws dsv3::Error on anything else.
std::vector<int32_t> ParseIds(const std::string& text);

}  // namespace dsv3::cli
