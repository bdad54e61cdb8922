// `dsv3 serve` (the OpenAI-compatible server of src/server) and `dsv3 bench-serve` (aggregate
// decode throughput of the batching scheduler at several concurrencies).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>

namespace dsv3::cli {

class ServeCommands {
 public:
  // Registers `serve` and `bench-serve` on `app`.
  explicit ServeCommands(CLI::App& app);
  ~ServeCommands();
  CLI::App* serve() const { return serve_; }
  CLI::App* bench() const { return bench_; }
  // Runs the chosen one (after app.parse); returns the exit status, throws dsv3::Error.
  int Run() const;

 private:
  int RunServe() const;
  int RunBench() const;

  struct Args;
  std::unique_ptr<Args> args_;  // on the heap: CLI11 keeps pointers into it
  CLI::App* serve_ = nullptr;
  CLI::App* bench_ = nullptr;
};

}  // namespace dsv3::cli
