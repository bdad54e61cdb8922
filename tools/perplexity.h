// `dsv3 perplexity`: mean cross-entropy and perplexity of a text file under a model, in windows
// of the context size (src/runtime/perplexity.h). Kept apart from tools/commands.cc.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>

namespace dsv3::cli {

class PerplexityCommand {
 public:
  // Registers `perplexity` and its options on `app`.
  explicit PerplexityCommand(CLI::App& app);
  ~PerplexityCommand();
  CLI::App* command() const;
  // Whether the command line chose `perplexity` (after app.parse).
  bool selected() const;
  // Runs it; returns the exit status, throws dsv3::Error on bad input.
  int Run() const;

 private:
  struct Args;
  std::unique_ptr<Args> args_;  // on the heap: CLI11 keeps pointers into it
};

}  // namespace dsv3::cli
