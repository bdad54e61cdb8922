// `dsv3 train-tokenizer`: trains a byte-level BPE tokenizer of DeepSeek-V3's kind on a text file
// (src/tokenizer/bpe_trainer.h) and writes tokenizer.json + tokenizer_config.json. Kept apart
// from tools/commands.cc.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>

namespace dsv3::cli {

class TrainTokenizerCommand {
 public:
  // Registers `train-tokenizer` and its options on `app`.
  explicit TrainTokenizerCommand(CLI::App& app);
  ~TrainTokenizerCommand();
  // Whether the command line chose `train-tokenizer` (after app.parse).
  bool selected() const;
  // Runs it; returns the exit status, throws dsv3::Error on bad input.
  int Run() const;

 private:
  struct Args;
  std::unique_ptr<Args> args_;  // on the heap: CLI11 keeps pointers into it
};

}  // namespace dsv3::cli
