// A plot of KV cache size against context length for several configs, drawn by gnuplot (Debian
// package gnuplot-nox) as SVG or PNG.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "analysis/arch.h"

namespace dsv3::analysis {

struct PlotOptions {
  std::string output;            // .svg or .png
  int64_t max_context = 131072;  // right end of the x axis
  std::string kv_dtype = "bf16";
  int64_t batch = 1;
};

// The gnuplot script, data inline, that writes the plot to `output_path` with `terminal`.
std::string KvPlotScript(const std::vector<Arch>& archs, const PlotOptions& o,
                         const std::string& terminal, const std::string& output_path);
// Runs gnuplot and writes o.output (through a temporary name and a rename).
void PlotKvCache(const std::vector<Arch>& archs, const PlotOptions& o);

}  // namespace dsv3::analysis
