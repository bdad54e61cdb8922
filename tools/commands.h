// The dsv3 subcommands, callable from main() after argument parsing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/mla.h"
#include "model/synth.h"
#include "runtime/bench.h"
#include "runtime/sampler.h"

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
};
struct GenerateArgs {
  std::string model_dir, ids;
  int64_t n = 32;
  int64_t ctx_size = 0;  // 0: prompt + n
  bool ignore_eos = false;
  SamplingParams sampling;
  bool no_mtp = false;  // plain decoding even when the checkpoint has an MTP module
  int64_t draft = 1;    // MTP draft tokens per step
};

struct BenchArgs {
  std::string model_dir;
  std::string threads;  // "1,2": one run per count; empty: all CPUs
  bool json = false;
  BenchOptions options;
};

int RunInfo(const InfoArgs& a);
int RunBench(const BenchArgs& a);
int RunLogits(const LogitsArgs& a);
int RunGenerate(const GenerateArgs& a);
int RunSynth(const SynthOptions& a);

// "1,2,3" -> {1, 2, 3}; throws dsv3::Error on anything else.
std::vector<int32_t> ParseIds(const std::string& text);

}  // namespace dsv3::cli
