// Synthetic checkpoints: a preset config (tiny, v2-lite, v3) with optional overrides, filled with
// seeded random weights and written in the exact Hugging Face layout (config.json, safetensors
// shards + model.safetensors.index.json, FP8 with block scales when asked).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/json.h"

namespace dsv3 {

struct SynthOptions {
  std::string preset = "tiny";  // tiny | v2-lite | v3
  std::string dtype = "bf16";   // bf16 | fp8
  // Config overrides "key=value"; the value is parsed as JSON when it can be (numbers, null,
  // true), else taken as a string. Dotted keys reach into objects: rope_scaling.factor=4.
  std::vector<std::string> set;
  uint64_t seed = 0;
  std::string out_dir;
  uint64_t shard_bytes = 4ull << 30;  // target shard size; one model.safetensors when it all fits
  bool progress = true;
  // Files copied into the output folder under their own names (e.g. tokenizer.json).
  std::vector<std::string> copy_files;
};

// The preset's config.json (for `dtype` bf16: no quantization_config).
Json PresetConfig(const std::string& preset);
// Preset + dtype + overrides, validated.
Json SynthConfig(const SynthOptions& options);
// Writes the checkpoint; returns the number of bytes of tensor files written.
uint64_t Synthesize(const SynthOptions& options);

}  // namespace dsv3
