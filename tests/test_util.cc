#include "tests/test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"

namespace dsv3::test {

Reference::Reference(const std::string& model_dir) {
  json_ = ReadJsonFile(model_dir + "/reference.json", 64u << 20);
  const std::string bin = ReadFile(model_dir + "/" + json_["blob"].get<std::string>());
  blob_.assign(bin.begin(), bin.end());
}

std::vector<float> Reference::F32(const Json& entry) const {
  EXPECT_EQ(entry["dtype"], "f32");
  int64_t n = 1;
  for (const Json& d : entry["shape"]) n *= d.get<int64_t>();
  std::vector<float> v(static_cast<size_t>(n));
  const size_t offset = entry["offset"].get<size_t>();
  if (offset + n * 4 > blob_.size()) throw std::runtime_error("reference entry outside blob");
  std::memcpy(v.data(), blob_.data() + offset, n * 4);
  return v;
}

std::vector<int32_t> Reference::I32(const Json& entry) const {
  EXPECT_EQ(entry["dtype"], "i32");
  int64_t n = 1;
  for (const Json& d : entry["shape"]) n *= d.get<int64_t>();
  std::vector<int32_t> v(static_cast<size_t>(n));
  const size_t offset = entry["offset"].get<size_t>();
  if (offset + n * 4 > blob_.size()) throw std::runtime_error("reference entry outside blob");
  std::memcpy(v.data(), blob_.data() + offset, n * 4);
  return v;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "dsv3-test-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

RunResult RunCommand(const std::string& command) {
  RunResult r;
  const TempDir tmp;
  const std::string err_path = tmp / "stderr";
  std::FILE* p = popen(("(" + command + ") 2>" + err_path).c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.err = ReadFile(err_path);
  return r;
}

std::string NpmPackageDir(const std::string& folder, const std::string& package, std::string* why) {
  const std::string dir = std::filesystem::path(Dsv3Binary()).parent_path().string() + "/" + folder;
  const std::string marker = dir + "/.installed-" + package;
  if (std::filesystem::exists(marker)) return dir;
  if (RunCommand("node --version").status != 0) {
    *why = "node is not installed";
    return "";
  }
  std::filesystem::create_directories(dir);
  const RunResult r = RunCommand("flock " + dir + "/.lock sh -c 'test -f " + marker +
                                 " || { npm install --prefix " + dir +
                                 " --no-audit --no-fund --no-save --loglevel=error " + package +
                                 " && touch " + marker + "; }'");
  if (r.status != 0 || !std::filesystem::exists(marker)) {
    *why = "npm install " + package + " failed: " + r.output();
    return "";
  }
  return dir;
}

RunResult SynthTextModel(const std::string& out) {
  return RunCommand(Dsv3Binary() + " synth --no-progress --preset tiny --seed 3 --tokenizer " +
                    TestData("tokenizer/deepseek_v3") +
                    " --set hidden_size=64 --set num_nextn_predict_layers=0 -o " + out);
}

std::vector<int32_t> SchedulerPrompt(int seq, int length, int64_t vocab) {
  std::vector<int32_t> p(length);
  for (int i = 0; i < length; ++i) p[i] = static_cast<int32_t>((seq * 131 + i * 17 + 3) % vocab);
  return p;
}

ServeRequest SchedulerRequest(std::vector<int32_t> prompt, int64_t n) {
  ServeRequest r;
  r.prompt = std::move(prompt);
  r.options.generate.max_new_tokens = n;
  r.options.generate.stop_at_eos = false;
  return r;
}

std::string ErrorMessage(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

void ExpectCleanError(const RunResult& r, std::initializer_list<std::string> parts) {
  EXPECT_EQ(r.status, 1) << r.output();
  int error_lines = 0;
  std::string error;
  std::istringstream in(r.output());
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("dsv3: error: ", 0) == 0) {
      ++error_lines;
      error = line;
    }
  }
  EXPECT_EQ(error_lines, 1) << r.output();
  for (const std::string& what : parts) {
    EXPECT_NE(error.find(what), std::string::npos) << "expected '" << what << "' in: " << error;
  }
}

void ExpectCleanError(const RunResult& r, const std::string& what) { ExpectCleanError(r, {what}); }

}  // namespace dsv3::test
