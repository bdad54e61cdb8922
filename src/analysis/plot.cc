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
#include <set>
#include <sstream>

#include "analysis/memory.h"
#include "core/error.h"
#include "core/json.h"

extern char** environ;

namespace dsv3::analysis {
namespace {

namespace fs = std::filesystem;

// A gnuplot single-quoted string: quotes doubled, control characters replaced.
std::string Quoted(const std::string& s) {
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

std::string TerminalFor(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".svg") return "svg size 900,560 dynamic background rgb 'white'";
  if (ext == ".png") return "pngcairo size 900,560";
  Fail("--plot {}: the file name must end in .svg or .png", path);
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
  s << "set output " << Quoted(output_path) << "\n";
  s << "set termoption noenhanced\n";
  s << "set title "
    << Quoted(
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
      << Quoted(fmt::format("{} ({}, {} B/token)", a.name, a.AttentionLabel(),
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
  if (o.output.find('\n') != std::string::npos) Fail("--plot: file name has a newline");
  const std::string terminal = TerminalFor(o.output);
  const ScratchDir tmp;
  const std::string partial = o.output + ".tmp";
  const std::string script = tmp / "kv.gp";
  WriteFileAtomic(script, KvPlotScript(archs, o, terminal, partial));
  RunGnuplot(script, tmp / "gnuplot.log");
  std::error_code ec;
  if (!fs::exists(partial, ec) || fs::file_size(partial, ec) == 0) {
    fs::remove(partial, ec);
    Fail("--plot: gnuplot wrote nothing to {}", partial);
  }
  fs::rename(partial, o.output, ec);
  if (ec) Fail("--plot: cannot rename {} to {}: {}", partial, o.output, ec.message());
}

}  // namespace dsv3::analysis
