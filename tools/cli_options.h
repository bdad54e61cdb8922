// Command-line options shared by several subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>

#include "kernels/matmul.h"
#include "model/kv_cache.h"
#include "model/model.h"

namespace dsv3::cli {

// An option whose value is f32 or bf16, parsed by from_name (KvCacheTypeFromName, ...) into *out;
// anything else is a validation error naming the option.
template <typename T, typename FromName>
void AddF32Bf16Option(CLI::App* cmd, const std::string& flag, T* out, FromName from_name,
                      const std::string& help) {
  cmd->add_option_function<std::string>(
      flag,
      [flag, out, from_name](const std::string& name) {
        const std::optional<T> v = from_name(name);
        if (!v) throw CLI::ValidationError(flag, "must be f32 or bf16, got '" + name + "'");
        *out = *v;
      },
      help);
}

// --kv-cache f32|bf16: the element type of the latent KV cache.
inline void AddKvCacheOption(CLI::App* cmd, KvCacheType* out) {
  AddF32Bf16Option(cmd, "--kv-cache", out, KvCacheTypeFromName,
                   "latent KV cache type: f32 (default; matches a float32 reference) or bf16 (half "
                   "the memory; on AMX CPUs faster attention at long context)");
}

// --matmul f32|bf16: the activations' precision in the AMX matrix products.
inline void AddMatMulOption(CLI::App* cmd, kernels::MatMulPrecision* out) {
  AddF32Bf16Option(cmd, "--matmul", out, kernels::MatMulPrecisionFromName,
                   "activations in prompt-sized products on AMX CPUs: f32 (default; matches a "
                   "float32 reference) or bf16 (rounded to BF16 as BF16 inference does: about 2x "
                   "faster prefill, and faster attention over a bf16 KV cache)");
}

// --lm-head stored|fp8: LoadOptions::fp8_lm_head.
inline void AddLmHeadOption(CLI::App* cmd, LoadOptions* out) {
  cmd->add_option_function<std::string>(
      "--lm-head",
      [out](const std::string& name) {
        if (name != "stored" && name != "fp8") {
          throw CLI::ValidationError("--lm-head", "must be stored or fp8, got '" + name + "'");
        }
        out->fp8_lm_head = name == "fp8";
      },
      "output projection: stored (default; as the checkpoint stores it) or fp8 (quantized at load "
      "to E4M3 with 128x128 block scales, DeepSeek's weight format: from a BF16 head, half the "
      "bytes per decoded token; accuracy cost in docs/performance.md)");
}

}  // namespace dsv3::cli
