// Command-line options shared by several subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "kernels/targets.h"
#include "model/kv_cache.h"

namespace dsv3::cli {

// --kv-cache f32|bf16: the element type of the latent KV cache, stored in *out.
inline void AddKvCacheOption(CLI::App* cmd, KvCacheType* out) {
  cmd->add_option_function<std::string>(
      "--kv-cache",
      [out](const std::string& name) {
        const std::optional<KvCacheType> t = KvCacheTypeFromName(name);
        if (!t) throw CLI::ValidationError("--kv-cache", "must be f32 or bf16, got '" + name + "'");
        *out = *t;
      },
      "latent KV cache type: f32 (default; matches a float32 reference) or bf16 (half the "
      "memory; on AMX CPUs faster attention at long context)");
}

// --matmul f32|bf16: the activations' precision in the AMX matrix products, stored in *out.
inline void AddMatMulOption(CLI::App* cmd, kernels::MatMulPrecision* out) {
  cmd->add_option_function<std::string>(
      "--matmul",
      [out](const std::string& name) {
        const std::optional<kernels::MatMulPrecision> p = kernels::MatMulPrecisionFromName(name);
        if (!p) throw CLI::ValidationError("--matmul", "must be f32 or bf16, got '" + name + "'");
        *out = *p;
      },
      "activations in prompt-sized products on AMX CPUs: f32 (default; matches a float32 "
      "reference) or bf16 (rounded to BF16 as BF16 inference does: about 2x faster prefill, "
      "and faster attention over a bf16 KV cache)");
}

}  // namespace dsv3::cli
