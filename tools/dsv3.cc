// dsv3: the command-line front end. Parses arguments and calls the engine; every error ends as
// one line on stderr and a non-zero exit status.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/targets.h"
#include "tools/analyze.h"
#include "tools/cli_options.h"
#include "tools/commands.h"
#include "tools/ep.h"
#include "tools/perplexity.h"
#include "tools/serve.h"
#include "tools/train.h"
#include "tools/train_tokenizer.h"

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

// Expert parallelism (only under mpirun): the exchange format and the node layout.
void AddEp(CLI::App* cmd, dsv3::cli::EpArgs& ep) {
  cmd->add_option("--ep-exchange", ep.exchange,
                  "under mpirun: MoE token exchange, f32 (exact, default) or fp8 (E4M3 dispatch "
                  "with 1x128 scales, BF16 combine)")
      ->check(CLI::IsMember({"f32", "fp8"}));
  cmd->add_option("--ranks-per-node", ep.ranks_per_node,
                  "under mpirun: consecutive ranks per machine; tokens cross between machines "
                  "once per machine (node-limited routing). Default: all on one")
      ->check(CLI::PositiveNumber);
}

void ApplyCommon(const Common& common, const dsv3::cli::EpSession& ep) {
  // Ranks sharing a machine share its cores.
  int threads = common.threads;
  if (threads == 0 && ep.active()) {
    threads = std::max(1, dsv3::NumThreads() / std::max(1, ep.local_size()));
  }
  dsv3::SetNumThreads(threads);
  if (!common.simd.empty() && !dsv3::kernels::ForceTarget(common.simd)) {
    std::string list;
    for (const std::string& t : dsv3::kernels::AvailableTargets()) list += " " + t;
    dsv3::Fail("--simd {}: not available on this CPU/build; available:{}", common.simd, list);
  }
}

// Error messages quote names from untrusted files: control characters are shown escaped, so
// the message stays one line and cannot drive the terminal.
std::string OneLine(std::string_view message) {
  std::string out;
  for (unsigned char ch : message) {
    if (ch < 0x20 || ch == 0x7F) {
      out += fmt::format("\\x{:02x}", ch);
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out;
}

}  // namespace

namespace {

int Main(int argc, char** argv, dsv3::cli::EpSession& ep) {
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
  logits_cmd->add_flag(
      "--mtp", logits.mtp,
      "the MTP module's logits: row i predicts token i+2 (from the main hidden "
      "state at i and token i+1; the last row uses the main model's greedy token)");
  logits_cmd
      ->add_option("--attn", attention, "attention form: auto (default), absorbed or expanded")
      ->check(CLI::IsMember({"auto", "absorbed", "expanded"}));
  dsv3::cli::AddKvCacheOption(logits_cmd, &logits.kv_cache);
  dsv3::cli::AddMatMulOption(logits_cmd, &logits.matmul);
  dsv3::cli::AddLmHeadOption(logits_cmd, &logits.load);
  AddCommon(logits_cmd, common);

  dsv3::cli::GenerateArgs gen;
  CLI::App* gen_cmd = app.add_subcommand(
      "generate", "generate text after a text prompt (-p), or token ids after ids (--ids)");
  gen_cmd->add_option("-m,--model", gen.model_dir, "model folder")->required();
  CLI::Option* ids_opt = gen_cmd->add_option("--ids", gen.ids, "prompt token ids, comma-separated");
  CLI::Option* prompt_opt = gen_cmd->add_option(
      "-p,--prompt", gen.prompt, "prompt text, put in the chat template unless --raw");
  ids_opt->excludes(prompt_opt);
  gen_cmd->add_flag("--raw", gen.raw,
                    "-p text is the whole prompt (BOS added as the tokenizer config says)");
  gen_cmd->add_option("--system", gen.system, "a system message before the prompt");
  gen_cmd->add_option("--tokenizer", gen.tokenizer,
                      "tokenizer.json or its folder (default: the model folder)");
  gen_cmd->add_option("--stop", gen.stop, "stop when the text contains STR (repeatable)");
  gen_cmd->add_option("-n,--n-predict", gen.n, "tokens to generate (default 32)");
  gen_cmd->add_option("--temp", gen.sampling.temperature, "temperature; 0 = greedy (default)");
  gen_cmd->add_option("--top-p", gen.sampling.top_p, "nucleus sampling threshold (default 1)");
  gen_cmd->add_option("--top-k", gen.sampling.top_k,
                      "keep the k most likely tokens (default 0 = all)");
  gen_cmd->add_option("--seed", gen.sampling.seed, "sampling seed (default 0)");
  gen_cmd->add_option("-c,--ctx-size", gen.ctx_size,
                      "KV cache size in tokens (default: prompt + n)");
  gen_cmd->add_flag("--ignore-eos", gen.ignore_eos, "keep generating after an EOS token");
  gen_cmd->add_flag("--json", gen.json,
                    "print one JSON object at the end (ids, text, timings, KV-cache bytes per "
                    "token, MTP drafts checked and accepted) instead of streaming");
  gen_cmd->add_flag("--no-mtp", gen.no_mtp,
                    "plain decoding even when the checkpoint has MTP layers");
  gen_cmd->add_option("--draft", gen.draft, "MTP draft tokens per step, 1-6 (default 1)")
      ->check(CLI::Range(1, 6));
  dsv3::cli::AddKvCacheOption(gen_cmd, &gen.kv_cache);
  dsv3::cli::AddMatMulOption(gen_cmd, &gen.matmul);
  dsv3::cli::AddLmHeadOption(gen_cmd, &gen.load);
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
  bench_cmd->add_option(
      "--draft", bench.draft,
      "MTP drafts per step for the speculative run, 1-6 (default 1; models with MTP)");
  bench_cmd->add_flag("--no-mtp", bench.no_mtp, "skip the speculative (MTP) run");
  bench_cmd->add_flag("--json", bench.json, "print JSON");
  dsv3::cli::AddKvCacheOption(bench_cmd, &bench.options.kv_cache);
  dsv3::cli::AddMatMulOption(bench_cmd, &bench.options.matmul);
  dsv3::cli::AddLmHeadOption(bench_cmd, &bench.load);
  AddCommon(bench_cmd, common, /*threads=*/false);

  dsv3::cli::ChatArgs chat;
  CLI::App* chat_cmd = app.add_subcommand(
      "chat", "interactive chat: one user message per stdin line; /exit or Ctrl-D ends it");
  chat_cmd->add_option("-m,--model", chat.model_dir, "model folder")->required();
  chat_cmd->add_option("--tokenizer", chat.tokenizer,
                       "tokenizer.json or its folder (default: the model folder)");
  chat_cmd->add_option("--system", chat.system, "system message");
  chat_cmd->add_option("--stop", chat.stop, "end a reply when it contains STR (repeatable)");
  chat_cmd->add_option("-n,--n-predict", chat.n, "most tokens per reply (default 1024)");
  chat_cmd->add_option("-c,--ctx-size", chat.ctx_size,
                       "KV cache size in tokens (default: max_position_embeddings, at most 8192)");
  chat_cmd->add_option("--temp", chat.sampling.temperature, "temperature; 0 = greedy (default)");
  chat_cmd->add_option("--top-p", chat.sampling.top_p, "nucleus sampling threshold (default 1)");
  chat_cmd->add_option("--top-k", chat.sampling.top_k, "keep the k most likely tokens");
  chat_cmd->add_option("--seed", chat.sampling.seed, "sampling seed (default 0)");
  chat_cmd->add_flag("--no-mtp", chat.no_mtp,
                     "plain decoding even when the checkpoint has MTP layers");
  chat_cmd->add_option("--draft", chat.draft, "MTP draft tokens per step, 1-6 (default 1)")
      ->check(CLI::Range(1, 6));
  dsv3::cli::AddKvCacheOption(chat_cmd, &chat.kv_cache);
  dsv3::cli::AddMatMulOption(chat_cmd, &chat.matmul);
  dsv3::cli::AddLmHeadOption(chat_cmd, &chat.load);
  AddCommon(chat_cmd, common);

  dsv3::cli::TokenizeArgs tokenize;
  CLI::App* tokenize_cmd = app.add_subcommand("tokenize", "text to token ids");
  tokenize_cmd
      ->add_option("--tokenizer,-m,--model", tokenize.tokenizer,
                   "tokenizer.json or a folder holding it")
      ->required();
  CLI::Option* tok_jsonl = tokenize_cmd->add_flag(
      "--jsonl", tokenize.jsonl, "stdin lines {\"text\": ...} -> stdout lines {\"ids\": [...]}");
  CLI::Option* tok_text = tokenize_cmd->add_option("-p,--text", tokenize.text, "text to encode");
  CLI::Option* tok_file = tokenize_cmd->add_option("--file", tokenize.file, "encode a whole file");
  tok_jsonl->excludes(tok_text)->excludes(tok_file);
  tok_text->excludes(tok_file);
  tokenize_cmd->add_flag("--add-special-tokens", tokenize.add_special_tokens,
                         "add BOS/EOS as transformers does (tokenizer_config.json)");
  tokenize_cmd
      ->add_option("--bench", tokenize.bench,
                   "with --file: encode N times, print MB/s instead of ids")
      ->needs(tok_file);

  dsv3::cli::DetokenizeArgs detokenize;
  CLI::App* detokenize_cmd = app.add_subcommand("detokenize", "token ids to text");
  detokenize_cmd
      ->add_option("--tokenizer,-m,--model", detokenize.tokenizer,
                   "tokenizer.json or a folder holding it")
      ->required();
  CLI::Option* detok_jsonl = detokenize_cmd->add_flag(
      "--jsonl", detokenize.jsonl,
      "stdin lines {\"ids\": [...], \"skip_special_tokens\": bool} -> {\"text\": ...}");
  CLI::Option* detok_ids =
      detokenize_cmd->add_option("--ids", detokenize.ids, "ids, comma-separated");
  detok_jsonl->excludes(detok_ids);
  detokenize_cmd->add_flag(
      "--skip-special-tokens", detokenize.skip_special_tokens,
      "drop special tokens (with --jsonl: for lines without \"skip_special_tokens\")");

  dsv3::cli::ChatTemplateArgs chat_template;
  CLI::App* chat_template_cmd = app.add_subcommand(
      "chat-template", "render conversations with the model's chat template, and encode them");
  chat_template_cmd
      ->add_option("-m,--model,--tokenizer", chat_template.model_dir,
                   "model folder (tokenizer.json + tokenizer_config.json)")
      ->required();
  chat_template_cmd
      ->add_flag("--jsonl", chat_template.jsonl,
                 "stdin lines {\"messages\": [...], \"add_generation_prompt\": bool, ...} -> "
                 "{\"text\": ..., \"ids\": [...]}")
      ->required();

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
  std::string synth_tokenizer;
  synth_cmd->add_option("--tokenizer", synth_tokenizer,
                        "copy this tokenizer.json (and tokenizer_config.json) into the checkpoint "
                        "and size vocab_size and the BOS/EOS ids to match");
  AddCommon(synth_cmd, common);

  dsv3::cli::AnalyzeCommand analyze(app);
  dsv3::cli::ServeCommands serve(app);
  dsv3::cli::TrainTokenizerCommand train_tokenizer(app);
  dsv3::cli::TrainCommand train(app);
  AddCommon(train.command(), common);
  dsv3::cli::PerplexityCommand perplexity(app);
  AddCommon(perplexity.command(), common);
  AddCommon(serve.serve(), common);
  AddCommon(serve.bench(), common);

  dsv3::cli::EpArgs ep_args;
  for (CLI::App* cmd :
       {info_cmd, logits_cmd, gen_cmd, bench_cmd, chat_cmd, serve.serve(), serve.bench()}) {
    AddEp(cmd, ep_args);
  }
  bench_cmd->add_flag("--ep-report", bench.ep_report,
                      "under mpirun: decode steps split into compute and exchange, bytes per rank");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ValidationError& e) {  // a bad option value: one line, like other errors
    if (ep.rank() == 0) std::fprintf(stderr, "dsv3: error: %s\n", OneLine(e.what()).c_str());
    return 1;
  } catch (const CLI::ParseError& e) {
    if (ep.rank() != 0) return e.get_exit_code();
    return app.exit(e);
  }
  const bool model_command = *info_cmd || *logits_cmd || *gen_cmd || *bench_cmd || *chat_cmd ||
                             *serve.serve() || *serve.bench();
  // Under mpirun only the model commands run on every rank; rank 0 runs the others alone.
  if (ep.rank() != 0 && !model_command) return 0;
  try {
    if (analyze.selected()) return analyze.Run();
    if (train_tokenizer.selected()) return train_tokenizer.Run();
    ApplyCommon(common, ep);
    if (model_command) ep.Configure(ep_args);
    if (*info_cmd) return dsv3::cli::RunInfo(info);
    if (train.selected()) return train.Run();
    if (perplexity.selected()) return perplexity.Run();
    if (*serve.serve() || *serve.bench()) return serve.Run();
    if (*logits_cmd) {
      logits.attention = attention == "expanded"   ? dsv3::AttentionImpl::kExpanded
                         : attention == "absorbed" ? dsv3::AttentionImpl::kAbsorbed
                                                   : dsv3::AttentionImpl::kAuto;
      return dsv3::cli::RunLogits(logits);
    }
    if (*gen_cmd) {
      gen.text = prompt_opt->count() > 0;
      if (!gen.text && ids_opt->count() == 0) dsv3::Fail("give a prompt: -p TEXT or --ids");
      return dsv3::cli::RunGenerate(gen);
    }
    if (*bench_cmd) return dsv3::cli::RunBench(bench);
    if (*chat_cmd) return dsv3::cli::RunChat(chat);
    if (*tokenize_cmd) {
      if (!tokenize.jsonl && tok_text->count() == 0 && tokenize.file.empty()) {
        dsv3::Fail("tokenize: give --jsonl, -p TEXT or --file FILE");
      }
      return dsv3::cli::RunTokenize(tokenize);
    }
    if (*detokenize_cmd) {
      if (!detokenize.jsonl && detokenize.ids.empty())
        dsv3::Fail("detokenize: give --jsonl or --ids");
      return dsv3::cli::RunDetokenize(detokenize);
    }
    if (*chat_template_cmd) return dsv3::cli::RunChatTemplate(chat_template);
    if (*synth_cmd) {
      if (!(shard_mib > 0)) dsv3::Fail("--shard-size must be positive");
      synth.shard_bytes = static_cast<uint64_t>(shard_mib * (1 << 20));
      synth.progress = !no_progress;
      return dsv3::cli::RunSynth(synth, synth_tokenizer);
    }
  } catch (const dsv3::cli::FollowerDone&) {  // a rank other than 0, rank 0 done
    return 0;
  } catch (const std::bad_alloc&) {
    if (ep.active()) ep.Abort("out of memory");
    std::fprintf(stderr, "dsv3: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {  // dsv3::Error and the rest
    // Under mpirun one rank's error ends every rank (the others may be waiting for it).
    if (ep.active()) ep.Abort(OneLine(e.what()));
    std::fprintf(stderr, "dsv3: error: %s\n", OneLine(e.what()).c_str());
    return 1;
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<dsv3::cli::EpSession> ep;
  try {
    ep = std::make_unique<dsv3::cli::EpSession>(&argc, &argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsv3: error: %s\n", e.what());
    return 1;
  }
  dsv3::cli::SetEp(ep.get());
  const int rc = Main(argc, argv, *ep);
  if (rc == 0) ep->Finish();  // rank 0: the other ranks leave their loop
  dsv3::cli::SetEp(nullptr);
  return rc;
}
