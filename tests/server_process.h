// A `dsv3 serve` process for the integration tests, found listening by its log line.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <string>
#include <thread>

#include "tests/test_util.h"

namespace dsv3::test {

// A running server: `command` (a shell command line that starts `dsv3 serve ... --port 0`, maybe
// under mpirun) with its stderr in `log`; stopped with SIGTERM when the object dies.
class ServerProcess {
 public:
  ServerProcess(const std::string& command, const std::string& log) : log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // no stray server when the test dies
      const std::string cmd = "exec " + command + " 2>" + log;
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Wait for the "serving ... on http://127.0.0.1:PORT" line (or the process to die).
    const std::regex listening("on http://127\\.0\\.0\\.1:([0-9]+)");
    for (int i = 0; i < 1200 && port_ == 0; ++i) {
      std::smatch m;
      const std::string text = ReadFile(log_);
      if (std::regex_search(text, m, listening)) port_ = std::stoi(m[1]);
      int status = 0;
      if (port_ == 0 && waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~ServerProcess() { Stop(); }
  // Sends SIGTERM and returns the exit status (128 + signal when killed by one).
  int Stop() {
    if (pid_ <= 0) return status_;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return status_;
  }
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return ReadFile(log_); }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int port_ = 0, status_ = -1;
};

}  // namespace dsv3::test
