// `dsv3 train`: trains a model of the DeepSeek V2/V3 family from a config.json on a text file
// (src/train/trainer.h) and writes a Hugging Face checkpoint with a resumable training state;
// `dsv3 train --plot LOG.jsonl ... -o loss.svg` plots the loss curves of such runs instead.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>

namespace dsv3::cli {

class TrainCommand {
 public:
  explicit TrainCommand(CLI::App& app);  // registers `train` and its options
  ~TrainCommand();
  CLI::App* command() const { return cmd_; }
  bool selected() const { return cmd_->parsed(); }
  int Run() const;  // the exit status; throws dsv3::Error on bad input

 private:
  struct Args;
  std::unique_ptr<Args> args_;  // on the heap: CLI11 keeps pointers into it
  CLI::App* cmd_ = nullptr;
};

}  // namespace dsv3::cli
