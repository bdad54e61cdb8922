#include "tools/train_tokenizer.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "core/parallel.h"
#include "tokenizer/bpe_trainer.h"

namespace dsv3::cli {

struct TrainTokenizerCommand::Args {
  CLI::App* cmd = nullptr;
  std::string data, output;
  int64_t vocab_size = 0;
  std::vector<std::string> specials;
  int threads = 0;
  bool no_progress = false;
};

TrainTokenizerCommand::TrainTokenizerCommand(CLI::App& app) : args_(std::make_unique<Args>()) {
  Args& a = *args_;
  a.cmd = app.add_subcommand(
      "train-tokenizer",
      "train a byte-level BPE tokenizer (DeepSeek-V3's pre-tokenizer) on a text file");
  a.cmd->add_option("--data", a.data, "training text (UTF-8)")->required();
  a.cmd
      ->add_option("--vocab-size", a.vocab_size,
                   "tokens in all: special tokens + 256 bytes + merges")
      ->required();
  a.cmd->add_option("--special", a.specials,
                    "a special token (repeatable): never merged across, ids 0.. in order. "
                    "<|endoftext|> becomes BOS and EOS; otherwise DeepSeek-V3's "
                    "<｜begin▁of▁sentence｜> and <｜end▁of▁sentence｜> are added first");
  a.cmd->add_option("-o,--output", a.output, "output folder (created if needed)")->required();
  a.cmd->add_option("-t,--threads", a.threads, "threads for pre-tokenizing (default: all CPUs)");
  a.cmd->add_flag("--no-progress", a.no_progress, "do not show progress");
}

TrainTokenizerCommand::~TrainTokenizerCommand() = default;

bool TrainTokenizerCommand::selected() const { return args_->cmd->parsed(); }

int TrainTokenizerCommand::Run() const {
  const Args& a = *args_;
  const auto t0 = std::chrono::steady_clock::now();
  SetNumThreads(a.threads);
  const SpecialTokens specials = ResolveSpecialTokens(a.specials);
  CheckOutputDir(a.output);  // before training, so a bad folder fails at once
  BpeTrainerOptions options;
  options.vocab_size = a.vocab_size;
  options.special_tokens = specials.tokens;
  options.progress = !a.no_progress;
  const TrainedBpe bpe = TrainBpeFromFile(a.data, options);
  const auto t1 = std::chrono::steady_clock::now();
  WriteTrainedTokenizer(bpe, specials, a.output);
  const double train_s = std::chrono::duration<double>(t1 - t0).count();
  const double total_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t vocab = static_cast<int64_t>(bpe.tokens.size());
  if (vocab < a.vocab_size) {
    std::fprintf(stderr,
                 "dsv3: note: the text has no more pairs to merge; the vocabulary has %lld tokens, "
                 "not %lld\n",
                 static_cast<long long>(vocab), static_cast<long long>(a.vocab_size));
  }
  std::fprintf(stderr,
               "dsv3: trained %lld tokens (%d special, 256 bytes, %zu merges) on %s (%lld bytes, "
               "%lld words, %lld unique) in %.2f s; wrote %s/tokenizer.json and "
               "tokenizer_config.json in %.2f s total\n",
               static_cast<long long>(vocab), bpe.num_special, bpe.merges.size(), a.data.c_str(),
               static_cast<long long>(bpe.text_bytes), static_cast<long long>(bpe.words),
               static_cast<long long>(bpe.unique_words), train_s, a.output.c_str(), total_s);
  return 0;
}

}  // namespace dsv3::cli
