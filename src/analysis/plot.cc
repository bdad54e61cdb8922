// gnuplot plots (see plot.h): the runner, the KV cache plot and the loss curves.
#include "analysis/plot.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "analysis/memory.h"
#include "core/error.h"
#include "core/json.h"

extern char** environ;

namespace dsv3::analysis {
namespace {

namespace fs = std::filesystem;

std::string TerminalFor(const std::string& path, const std::string& option) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".svg") return "svg size 900,560 dynamic background rgb 'white'";
  if (ext == ".png") return "pngcairo size 900,560";
  Fail("{} {}: the file name must end in .svg or .png", option, path);
}

// A temporary folder, removed with everything in it when the object dies.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (fs::temp_directory_path() / "dsv3-plot-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) Fail("cannot create a temporary folder for gnuplot");
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) return line;
  }
  return "no message";
}

// Runs `gnuplot script` without a shell; fails with gnuplot's first error line.
void RunGnuplot(const std::string& script, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::string program = "gnuplot";
  std::vector<char*> argv = {program.data(), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = 0;
  const int err = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err == ENOENT) {
    Fail(
        "--plot needs gnuplot, which is not installed (Debian package gnuplot-nox; "
        "scripts/setup.sh installs it)");
  }
  if (err != 0) Fail("--plot: cannot run gnuplot: {}", std::strerror(err));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) Fail("--plot: waiting for gnuplot failed: {}", std::strerror(errno));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    Fail("--plot: gnuplot failed: {}", FirstLine(log));
  }
}

}  // namespace

std::string GnuplotQuoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "''";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += '?';
    } else {
      out += c;
    }
  }
  return out + "'";
}

void RunGnuplotPlot(const GnuplotScript& script, const std::string& output,
                    const std::string& output_option) {
  if (output.find('\n') != std::string::npos) Fail("{}: file name has a newline", output_option);
  const std::string terminal = TerminalFor(output, output_option);
  const ScratchDir tmp;
  const std::string partial = output + ".tmp";
  const std::string script_path = tmp / "plot.gp";
  WriteFileAtomic(script_path, script(terminal, partial));
  RunGnuplot(script_path, tmp / "gnuplot.log");
  std::error_code ec;
  if (!fs::exists(partial, ec) || fs::file_size(partial, ec) == 0) {
    fs::remove(partial, ec);
    Fail("--plot: gnuplot wrote nothing to {}", partial);
  }
  fs::rename(partial, output, ec);
  if (ec) Fail("--plot: cannot rename {} to {}: {}", partial, output, ec.message());
}

std::string KvPlotScript(const std::vector<Arch>& archs, const PlotOptions& o,
                         const std::string& terminal, const std::string& output_path) {
  const int64_t bytes_per_value = CacheDtypeBytes(o.kv_dtype);
  // Evenly spaced contexts, plus every sliding window so the line bends where the cache stops
  // growing.
  std::set<int64_t> xs;
  constexpr int kSteps = 64;
  for (int i = 0; i <= kSteps; ++i) xs.insert(o.max_context * i / kSteps);
  for (const Arch& a : archs) {
    if (a.sliding_window > 0 && a.sliding_window < o.max_context) xs.insert(a.sliding_window);
  }
  std::ostringstream s;
  s << "set terminal " << terminal << "\n";
  s << "set output " << GnuplotQuoted(output_path) << "\n";
  s << "set termoption noenhanced\n";
  s << "set title "
    << GnuplotQuoted(
           fmt::format("KV cache per {} against context length ({}, {} B per value)",
                       o.batch == 1 ? std::string("sequence") : fmt::format("batch of {}", o.batch),
                       o.kv_dtype, bytes_per_value))
    << "\n";
  s << "set xlabel 'context length (tokens)'\n";
  s << "set ylabel 'KV cache (GB, 1 GB = 1e9 bytes)'\n";
  s << "set key left top Left reverse\nset grid\nset xrange [0:" << o.max_context
    << "]\nset yrange [0:*]\n";
  s << "$kv << EOD\n";
  for (int64_t x : xs) {
    s << x;
    for (const Arch& a : archs) {
      s << fmt::format(" {:.9g}",
                       static_cast<double>(KvCacheBytes(a, bytes_per_value, x, o.batch)) / 1e9);
    }
    s << "\n";
  }
  s << "EOD\nplot ";
  for (size_t i = 0; i < archs.size(); ++i) {
    const Arch& a = archs[i];
    s << (i ? ", \\\n     " : "") << "$kv using 1:" << i + 2 << " with lines linewidth 2 title "
      << GnuplotQuoted(fmt::format("{} ({}, {} B/token)", a.name, a.AttentionLabel(),
                                   KvCacheBytesPerToken(a, bytes_per_value)));
  }
  s << "\n";
  return s.str();
}

void PlotKvCache(const std::vector<Arch>& archs, const PlotOptions& o) {
  if (archs.empty()) Fail("--plot needs at least one config");
  if (o.max_context < 1 || o.max_context > (int64_t{1} << 40)) {
    Fail("--plot-max-context must be in [1, 2^40], got {}", o.max_context);
  }
  RunGnuplotPlot(
      [&](const std::string& terminal, const std::string& output_path) {
        return KvPlotScript(archs, o, terminal, output_path);
      },
      o.output, "--plot");
}

// ---- loss curves --------------------------------------------------------------------------------

namespace {

// A number field of a log line, or an error naming the file and line.
double LogNumber(const Json& j, const char* field, const std::string& where) {
  if (!j.at(field).is_number()) Fail("{}: '{}' is not a number", where, field);
  return j.at(field).get<double>();
}

// The log's folder name: runs are told apart by their output folders (fp8/, bf16/, ...).
std::string FolderName(const std::string& path) {
  const fs::path p = fs::absolute(path).lexically_normal();
  const std::string folder = p.parent_path().filename().string();
  return folder.empty() ? p.stem().string() : folder;
}

// Centered moving average over `window` (odd) points, truncated at the ends.
std::vector<double> MovingAverage(const std::vector<std::pair<int64_t, double>>& xy,
                                  int64_t window) {
  const int64_t n = static_cast<int64_t>(xy.size()), half = window / 2;
  std::vector<double> prefix(n + 1, 0.0);
  for (int64_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + xy[i].second;
  std::vector<double> out(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t lo = std::max<int64_t>(0, i - half), hi = std::min(n, i + half + 1);
    out[i] = (prefix[hi] - prefix[lo]) / static_cast<double>(hi - lo);
  }
  return out;
}

// Colors that stay apart on white (matplotlib's first eight), one per log, cycling.
constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                   "#9467bd", "#8c564b", "#e377c2", "#17becf"};

}  // namespace

LossLog ReadLossLog(const std::string& path, const std::string& label) {
  std::ifstream in(path);
  if (!in) Fail("--plot {}: cannot open", path);
  LossLog log;
  log.label = label.empty() ? FolderName(path) : label;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path, number);
    const Json j = ParseJson(line, where);
    if (!j.is_object()) Fail("{}: expected a JSON object per line", where);
    if (!j.contains("step")) continue;
    if (!j["step"].is_number_integer()) Fail("{}: 'step' is not an integer", where);
    const int64_t step = j["step"].get<int64_t>();
    if (j.contains("ce")) log.train.emplace_back(step, LogNumber(j, "ce", where));
    if (j.contains("valid_ce")) log.valid.emplace_back(step, LogNumber(j, "valid_ce", where));
  }
  if (in.bad()) Fail("--plot {}: read failed", path);
  if (log.train.empty()) {
    Fail(
        "--plot {}: no training step lines (objects with 'step' and 'ce'); is it a "
        "train_log.jsonl of `dsv3 train`?",
        path);
  }
  const auto by_step = [](const auto& a, const auto& b) { return a.first < b.first; };
  std::stable_sort(log.train.begin(), log.train.end(), by_step);
  std::stable_sort(log.valid.begin(), log.valid.end(), by_step);
  return log;
}

int64_t SmoothingWindow(size_t n) { return 2 * static_cast<int64_t>(n / 200) + 1; }

std::string LossPlotScript(const std::vector<LossLog>& logs, const std::string& terminal,
                           const std::string& output_path) {
  std::ostringstream s;
  s << "set terminal " << terminal << "\n";
  s << "set output " << GnuplotQuoted(output_path) << "\n";
  s << "set termoption noenhanced\n";
  s << "set title 'Main-token cross-entropy: training (thin) and validation (points)'\n";
  s << "set xlabel 'step'\n";
  s << "set ylabel 'loss (nats/token)'\n";
  s << "set key right top\nset grid\n";
  std::vector<std::string> series;
  for (size_t i = 0; i < logs.size(); ++i) {
    const LossLog& log = logs[i];
    const std::string color = GnuplotQuoted(kColors[i % std::size(kColors)]);
    const int64_t window = SmoothingWindow(log.train.size());
    const std::vector<double> ce = MovingAverage(log.train, window);
    s << "$train" << i << " << EOD\n";
    for (size_t k = 0; k < ce.size(); ++k)
      s << fmt::format("{} {:.9g}\n", log.train[k].first, ce[k]);
    s << "EOD\n";
    const std::string smoothed =
        window > 1 ? fmt::format(" (moving mean of {} steps)", window) : std::string();
    series.push_back(
        fmt::format("$train{} using 1:2 with lines linewidth 1 linecolor rgb {} title {}", i, color,
                    GnuplotQuoted(log.label + " train CE" + smoothed)));
    if (log.valid.empty()) continue;
    s << "$valid" << i << " << EOD\n";
    for (const auto& [step, v] : log.valid) s << fmt::format("{} {:.9g}\n", step, v);
    s << "EOD\n";
    series.push_back(fmt::format(
        "$valid{} using 1:2 with linespoints linewidth 2 pointtype 7 pointsize 0.8 linecolor "
        "rgb {} title {}",
        i, color, GnuplotQuoted(log.label + " valid CE")));
  }
  s << "plot ";
  for (size_t k = 0; k < series.size(); ++k) s << (k ? ", \\\n     " : "") << series[k];
  s << "\n";
  return s.str();
}

void PlotLossCurves(const std::vector<std::string>& log_paths,
                    const std::vector<std::string>& labels, const std::string& output) {
  if (log_paths.empty()) Fail("train --plot needs at least one LOG.jsonl");
  if (!labels.empty() && labels.size() != log_paths.size()) {
    Fail("train --plot: {} --label for {} --plot; give one per log or none", labels.size(),
         log_paths.size());
  }
  std::vector<LossLog> logs;
  for (size_t i = 0; i < log_paths.size(); ++i) {
    logs.push_back(ReadLossLog(log_paths[i], labels.empty() ? std::string() : labels[i]));
  }
  RunGnuplotPlot(
      [&](const std::string& terminal, const std::string& output_path) {
        return LossPlotScript(logs, terminal, output_path);
      },
      output, "-o");
}

}  // namespace dsv3::analysis
