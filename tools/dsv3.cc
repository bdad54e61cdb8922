// dsv3: the command-line front end. Parses arguments and calls the engine; every error ends as
// one line on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/targets.h"
#include "tools/analyze.h"
#include "tools/commands.h"

namespace {

struct Common {
  int threads = 0;
  std::string simd;
};

void AddCommon(CLI::App* cmd, Common& common, bool threads = true) {
  if (threads) cmd->add_option("-t,--threads", common.threads, "threads (default: all CPUs)");
  cmd->add_option("--simd", common.simd,
                  "force a SIMD target (AVX3, AVX2, SSE4, SSSE3, EMU128, ...; default: best)");
}

void ApplyCommon(const Common& common) {
  dsv3::SetNumThreads(common.threads);
  if (!common.simd.empty() && !dsv3::kernels::ForceTarget(common.simd)) {
    std::string list;
    for (const std::string& t : dsv3::kernels::AvailableTargets()) list += " " + t;
    dsv3::Fail("--simd {}: not available on this CPU/build; available:{}", common.simd, list);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dsv3: DeepSeek-V2/V3 family inference on CPU, from Hugging Face checkpoints"};
  app.require_subcommand(1);
  Common common;

  dsv3::cli::InfoArgs info;
  CLI::App* info_cmd =
      app.add_subcommand("info", "config summary, parameter counts, weight and KV-cache bytes");
  info_cmd->add_option("-m,--model", info.model_dir, "model folder (config.json + safetensors)")
      ->required();
  info_cmd->add_flag("--json", info.json, "print JSON");
  AddCommon(info_cmd, common);

  dsv3::cli::LogitsArgs logits;
  std::string attention = "auto";
  CLI::App* logits_cmd =
      app.add_subcommand("logits", "write raw float32 logits [n_ids, vocab] for every position");
  logits_cmd->add_option("-m,--model", logits.model_dir, "model folder")->required();
  logits_cmd->add_option("--ids", logits.ids, "token ids, comma-separated")->required();
  logits_cmd->add_option("-o,--output", logits.output, "output file")->required();
  logits_cmd->add_flag("--decode", logits.decode,
                       "feed the ids one at a time through the KV cache");
  logits_cmd
      ->add_option("--attn", attention, "attention form: auto (default), absorbed or expanded")
      ->check(CLI::IsMember({"auto", "absorbed", "expanded"}));
  AddCommon(logits_cmd, common);

  dsv3::cli::GenerateArgs gen;
  CLI::App* gen_cmd = app.add_subcommand("generate", "generate token ids after a prompt of ids");
  gen_cmd->add_option("-m,--model", gen.model_dir, "model folder")->required();
  gen_cmd->add_option("--ids", gen.ids, "prompt token ids, comma-separated")->required();
  gen_cmd->add_option("-n,--n-predict", gen.n, "tokens to generate (default 32)");
  gen_cmd->add_option("--temp", gen.sampling.temperature, "temperature; 0 = greedy (default)");
  gen_cmd->add_option("--top-p", gen.sampling.top_p, "nucleus sampling threshold (default 1)");
  gen_cmd->add_option("--top-k", gen.sampling.top_k,
                      "keep the k most likely tokens (default 0 = all)");
  gen_cmd->add_option("--seed", gen.sampling.seed, "sampling seed (default 0)");
  gen_cmd->add_option("-c,--ctx-size", gen.ctx_size,
                      "KV cache size in tokens (default: prompt + n)");
  gen_cmd->add_flag("--ignore-eos", gen.ignore_eos, "keep generating after an EOS token");
  gen_cmd->add_flag("--no-mtp", gen.no_mtp,
                    "plain decoding even when the checkpoint has MTP layers");
  gen_cmd->add_option("--draft", gen.draft, "MTP draft tokens per step, 1-6 (default 1)")
      ->check(CLI::Range(1, 6));
  AddCommon(gen_cmd, common);

  dsv3::cli::BenchArgs bench;
  CLI::App* bench_cmd = app.add_subcommand("bench", "measure prefill, decode and memory bandwidth");
  bench_cmd->add_option("-m,--model", bench.model_dir, "model folder")->required();
  bench_cmd->add_option("-p,--prompt", bench.options.prompt_tokens, "prompt tokens (default 512)");
  bench_cmd->add_option("-n,--n-predict", bench.options.decode_tokens,
                        "decoded tokens (default 128)");
  bench_cmd->add_option("-t,--threads", bench.threads,
                        "thread counts, e.g. 1,2 (default: all CPUs)");
  bench_cmd->add_option("--context", bench.options.context,
                        "also decode after this many cached tokens (random history)");
  bench_cmd->add_option("--seed", bench.options.seed, "seed of the random prompt");
  bench_cmd->add_flag("--json", bench.json, "print JSON");
  AddCommon(bench_cmd, common, /*threads=*/false);

  dsv3::SynthOptions synth;
  double shard_mib = 4096;
  bool no_progress = false;
  CLI::App* synth_cmd =
      app.add_subcommand("synth", "write a random checkpoint in Hugging Face layout");
  synth_cmd->add_option("--preset", synth.preset, "tiny | v2-lite | v3 (default tiny)")
      ->check(CLI::IsMember({"tiny", "v2-lite", "v3"}));
  synth_cmd->add_option("--dtype", synth.dtype, "bf16 | fp8 (default bf16)")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  synth_cmd->add_option("--set", synth.set, "override a config field: key=value (repeatable)");
  synth_cmd->add_option("--seed", synth.seed, "random seed (default 0)");
  synth_cmd->add_option("--shard-size", shard_mib, "target shard size in MiB (default 4096)");
  synth_cmd->add_flag("--no-progress", no_progress, "do not show progress");
  synth_cmd->add_option("-o,--output", synth.out_dir, "output folder")->required();
  AddCommon(synth_cmd, common);

  dsv3::cli::AnalyzeCommand analyze(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (analyze.selected()) return analyze.Run();
    ApplyCommon(common);
    if (*info_cmd) return dsv3::cli::RunInfo(info);
    if (*logits_cmd) {
      logits.attention = attention == "expanded"   ? dsv3::AttentionImpl::kExpanded
                         : attention == "absorbed" ? dsv3::AttentionImpl::kAbsorbed
                                                   : dsv3::AttentionImpl::kAuto;
      return dsv3::cli::RunLogits(logits);
    }
    if (*gen_cmd) return dsv3::cli::RunGenerate(gen);
    if (*bench_cmd) return dsv3::cli::RunBench(bench);
    if (*synth_cmd) {
      if (!(shard_mib > 0)) dsv3::Fail("--shard-size must be positive");
      synth.shard_bytes = static_cast<uint64_t>(shard_mib * (1 << 20));
      synth.progress = !no_progress;
      return dsv3::cli::RunSynth(synth);
    }
  } catch (const dsv3::Error& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "dsv3: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
