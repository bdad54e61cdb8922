// Command-line options shared by several subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

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

}  // namespace dsv3::cli
