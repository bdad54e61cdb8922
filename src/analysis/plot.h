// Plots drawn by gnuplot (Debian package gnuplot-nox) as SVG or PNG: KV cache size against context
// length for several configs (`dsv3 analyze --plot`), loss curves of training runs from their
// train_log.jsonl (`dsv3 train --plot`), and the runner both use (gnuplot without a shell, in a
// scratch folder, writing through a temporary name and a rename).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "analysis/arch.h"

namespace dsv3::analysis {

// ---- the runner ---------------------------------------------------------------------------------

// A gnuplot single-quoted string: quotes doubled, control characters replaced by '?'.
std::string GnuplotQuoted(const std::string& s);

// Returns the gnuplot script, data inline, that writes the plot to `output_path` with `terminal`.
using GnuplotScript =
    std::function<std::string(const std::string& terminal, const std::string& output_path)>;

// Writes the plot of `script` to `output`: the terminal comes from the extension (.svg or .png;
// anything else is an error naming `output_option`, the option that gave the file name), gnuplot
// runs on the script in a scratch folder and writes `output`.tmp, renamed to `output` once gnuplot
// succeeded. Fails with gnuplot's first error line, or clearly when gnuplot is not installed.
void RunGnuplotPlot(const GnuplotScript& script, const std::string& output,
                    const std::string& output_option);

// ---- KV cache against context length ------------------------------------------------------------

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

// ---- loss curves of training runs ---------------------------------------------------------------

// The curves of one train_log.jsonl (src/train/trainer.cc): x = step, y = nats/token.
struct LossLog {
  std::string label;                              // the legend
  std::vector<std::pair<int64_t, double>> train;  // step lines: ("step", "ce"), by step
  std::vector<std::pair<int64_t, double>> valid;  // validation lines: ("step", "valid_ce")
};

// Reads a train_log.jsonl: lines with "step" and "ce" are training steps, lines with "step" and
// "valid_ce" validations, empty lines and other objects are skipped. `label` empty: the name of
// the log's folder. Errors name the file and line: a missing file, a line that is not a JSON
// object, a field that is not a number, a log without step lines.
LossLog ReadLossLog(const std::string& path, const std::string& label);

// Training CE is drawn as a thin line of its centered moving average over `SmoothingWindow(n)` of
// the n step lines (the odd number nearest 1% of them; 1, the raw values, below 200 steps;
// truncated at the ends), validation CE as points joined by a line, one color per log.
int64_t SmoothingWindow(size_t n);
std::string LossPlotScript(const std::vector<LossLog>& logs, const std::string& terminal,
                           const std::string& output_path);
// `dsv3 train --plot`: the curves of every log in one plot written to `output` (.svg or .png).
// `labels`: none (each log's folder name) or one per log.
void PlotLossCurves(const std::vector<std::string>& log_paths,
                    const std::vector<std::string>& labels, const std::string& output);

}  // namespace dsv3::analysis
