// `dsv3 train --plot` end to end: two hand-written train_log.jsonl drawn into one SVG by gnuplot,
// the legend from the folder names or --label, and bad input ending in one error line.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "tests/test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using test::Dsv3Binary;
using test::ExpectCleanError;
using test::ReadFile;
using test::RunCommand;
using test::RunResult;
using test::TempDir;
using test::WriteFile;

// A log as src/train/trainer.cc writes it: a step line per step, validation every 2 steps.
std::string Log(double ce0) {
  std::string s;
  for (int step = 1; step <= 4; ++step) {
    const double ce = ce0 - 0.5 * step;
    s += "{\"step\":" + std::to_string(step) + ",\"epoch\":0,\"loss\":" + std::to_string(ce + 0.1) +
         ",\"ce\":" + std::to_string(ce) + ",\"mtp_ce\":" + std::to_string(ce + 0.2) +
         ",\"balance\":0.001,\"lr\":0.001,\"grad_norm\":1.5}\n";
    if (step % 2 == 0) {
      s += "{\"step\":" + std::to_string(step) + ",\"valid_ce\":" + std::to_string(ce + 0.3) +
           ",\"valid_ppl\":100}\n";
    }
  }
  return s;
}

class TrainPlot : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(tmp_ / "fp8");
    fs::create_directories(tmp_ / "bf16");
    WriteFile(a_, Log(10));
    WriteFile(b_, Log(9));
  }
  RunResult Train(const std::string& args) { return RunCommand(Dsv3Binary() + " train " + args); }
  TempDir tmp_;
  const std::string a_ = tmp_ / "fp8/train_log.jsonl", b_ = tmp_ / "bf16/train_log.jsonl";
};

TEST_F(TrainPlot, TwoRunsInOneSvg) {
  if (RunCommand("command -v gnuplot").status != 0) {
    if (std::getenv("CI") != nullptr) FAIL() << "gnuplot missing on CI (scripts/setup.sh)";
    GTEST_SKIP() << "gnuplot not installed (scripts/setup.sh installs gnuplot-nox)";
  }
  RunResult r = Train("--plot " + a_ + " --plot " + b_ + " -o " + (tmp_ / "loss.svg"));
  ASSERT_EQ(r.status, 0) << r.output();
  std::string svg = ReadFile(tmp_ / "loss.svg");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u) << svg.substr(0, 100);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("fp8 train CE"), std::string::npos);  // the legend: the folder names
  EXPECT_NE(svg.find("fp8 valid CE"), std::string::npos);
  EXPECT_NE(svg.find("bf16 train CE"), std::string::npos);
  EXPECT_NE(svg.find("bf16 valid CE"), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp_ / "loss.svg.tmp"));

  r = Train("--plot " + a_ + " --plot " + b_ + " --label 'FP8 recipe' --label BF16 -o " +
            (tmp_ / "loss.png"));
  ASSERT_EQ(r.status, 0) << r.output();
  const std::string png = ReadFile(tmp_ / "loss.png");
  EXPECT_GT(png.size(), 1000u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  r = Train("--plot " + a_ + " --plot " + b_ + " --label 'FP8 recipe' --label BF16 -o " +
            (tmp_ / "labels.svg"));
  ASSERT_EQ(r.status, 0) << r.output();
  svg = ReadFile(tmp_ / "labels.svg");
  EXPECT_NE(svg.find("FP8 recipe train CE"), std::string::npos);
  EXPECT_NE(svg.find("BF16 valid CE"), std::string::npos);
}

TEST_F(TrainPlot, BadInput) {
  const std::string out = " -o " + (tmp_ / "loss.svg");
  ExpectCleanError(Train("--plot " + (tmp_ / "none.jsonl") + out), "none.jsonl: cannot open");
  WriteFile(tmp_ / "bad.jsonl", "{\"step\":1,\"ce\":2}\n{\"step\":2,\n");
  ExpectCleanError(Train("--plot " + (tmp_ / "bad.jsonl") + out), "bad.jsonl:2: invalid JSON");
  ExpectCleanError(Train("--plot " + a_ + " --data x.txt" + out), "--data is a training option");
  ExpectCleanError(Train("--plot " + a_ + " --label a --label b" + out), "2 --label for 1 --plot");
  ExpectCleanError(Train("--plot " + a_ + " -o " + (tmp_ / "loss.pdf")), ".svg or .png");
  ExpectCleanError(Train("--label a" + out), "give --plot");
  EXPECT_FALSE(fs::exists(tmp_ / "loss.svg"));
}

}  // namespace
}  // namespace dsv3
