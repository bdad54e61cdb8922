// `dsv3 analyze` and its subcommands (tpot, mtp, network): the co-design analysis of
// src/analysis behind a thin command line. Kept apart from tools/commands.cc.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>

namespace dsv3::cli {

class AnalyzeCommand {
 public:
  // Registers `analyze` and its options on `app`.
  explicit AnalyzeCommand(CLI::App& app);
  ~AnalyzeCommand();
  // Whether the command line chose `analyze` (after app.parse).
  bool selected() const;
  // Runs it; returns the exit status, throws dsv3::Error on bad input.
  int Run() const;

 private:
  int RunConfigs() const;
  int RunTpot() const;
  int RunMtp() const;
  int RunNetwork() const;

  struct Args;
  std::unique_ptr<Args> args_;  // on the heap: CLI11 keeps pointers into it
};

}  // namespace dsv3::cli
