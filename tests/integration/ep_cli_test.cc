// The dsv3 commands under mpirun (expert parallelism): the same output as one process, what each
// rank holds, the exchange report, the server, and errors that end every rank.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdlib>

#include "core/json.h"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace dsv3 {
namespace {

using test::RunCommand;
using test::RunResult;

class EpCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);  // CI's containers run as root
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    // Sanitizer builds: no leak check under mpirun (see tests/CMakeLists.txt).
    setenv("LSAN_OPTIONS", "detect_leaks=0", 1);
  }
  // `dsv3 ARGS` on n ranks; `timeout` turns a hang into a failure (status 124).
  static std::string Mpi(int n, const std::string& args) {
    return "timeout 120 mpirun --oversubscribe -np " + std::to_string(n) + " " +
           test::Dsv3Binary() + " " + args;
  }
  static std::string One(const std::string& args) { return test::Dsv3Binary() + " " + args; }
  static std::string Model() { return test::TestData("models/v3-tiny"); }
};

TEST_F(EpCliTest, GenerateGivesTheSameTokensOnAnyNumberOfRanks) {
  DSV3_REQUIRE_DATA(Model() + "/config.json");
  const std::string args = "generate -m " + Model() + " --ids 1,2,3,4,5 -n 16 -t 1";
  const RunResult want = RunCommand(One(args));
  ASSERT_EQ(want.status, 0) << want.output();
  for (int n : {1, 2, 4}) {
    const RunResult got = RunCommand(Mpi(n, args));
    ASSERT_EQ(got.status, 0) << got.output();
    EXPECT_EQ(got.out, want.out) << n << " ranks";
    const RunResult two_level = RunCommand(Mpi(n, args + " --ranks-per-node 2"));
    if (n % 2 == 0) {
      EXPECT_EQ(two_level.out, want.out) << n << " ranks, 2 per node";
    }
  }
  const RunResult fp8 = RunCommand(Mpi(2, args + " --ep-exchange fp8 --no-mtp"));
  EXPECT_EQ(fp8.status, 0) << fp8.output();
}

TEST_F(EpCliTest, InfoPrintsWhatEachRankHolds) {
  DSV3_REQUIRE_DATA(Model() + "/config.json");
  const RunResult r = RunCommand(Mpi(4, "info --json -m " + Model()));
  ASSERT_EQ(r.status, 0) << r.output();
  const Json j = Json::parse(r.out);
  const RunResult one = RunCommand(One("info --json -m " + Model()));
  const Json alone = Json::parse(one.out);
  const double total =
      alone["weights"]["bytes_main"].get<double>() + alone["weights"]["bytes_mtp"].get<double>();
  ASSERT_EQ(j["expert_parallel"].size(), 4u);
  for (int r = 0; r < 4; ++r) {
    const Json& e = j["expert_parallel"][r];
    EXPECT_EQ(e["rank"], r);
    EXPECT_EQ(e["routed_experts"], Json::array({4 * r, 4 * r + 3}));  // 16 experts / 4
    EXPECT_DOUBLE_EQ(e["bytes_held"].get<double>() + e["bytes_elsewhere"].get<double>(), total);
    EXPECT_LT(e["bytes_held"].get<double>(), total);
    EXPECT_GT(e["rss_bytes"].get<double>(), 0);
  }
  const RunResult text = RunCommand(Mpi(2, "info -m " + Model()));
  EXPECT_NE(text.out.find("rank 1"), std::string::npos) << text.out;
}

TEST_F(EpCliTest, BenchReportsTheExchange) {
  DSV3_REQUIRE_DATA(Model() + "/config.json");
  const RunResult r = RunCommand(
      Mpi(2, "bench -m " + Model() + " -p 8 -n 4 --no-mtp --ep-report --ep-exchange fp8"));
  ASSERT_EQ(r.status, 0) << r.output();
  for (const char* want : {"expert parallelism: 2 ranks", "exchange fp8", "decode step",
                           "rank 0: exchange", "rank 1: exchange", "analyzer model",
                           "link rank 0 <-> 1", "dsv3 analyze tpot CONFIG --bandwidth-gbs"}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  }
  test::ExpectCleanError(RunCommand(One("bench -m " + Model() + " -p 8 -n 2 --ep-report")),
                         "--ep-report");
}

TEST_F(EpCliTest, ServeOnTwoRanksAnswersLikeOneProcess) {
  DSV3_REQUIRE_DATA(test::TestData("tokenizer/deepseek_v3"));
  const test::TempDir dir;
  ASSERT_EQ(test::SynthTextModel(dir / "m").status, 0);
  const std::string args = "serve -m " + (dir / "m") + " --port 0 --parallel 3 --ctx-size 256 -t 1";
  auto ask = [&](const test::ServerProcess& s) {
    httplib::Client http("127.0.0.1", s.port());
    std::vector<std::string> out;
    for (const char* prompt : {"Hello there", "One two three", "Expert parallelism"}) {
      const Json body = {
          {"model", "m"}, {"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}};
      auto res = http.Post("/v1/completions", body.dump(), "application/json");
      EXPECT_TRUE(res) << "no answer";
      if (!res) break;
      EXPECT_EQ(res->status, 200) << res->body;
      out.push_back(Json::parse(res->body)["choices"][0]["text"].get<std::string>());
    }
    return out;
  };
  std::vector<std::string> want, got;
  {
    test::ServerProcess one(One(args), dir / "one.log");
    ASSERT_GT(one.port(), 0) << one.log();
    want = ask(one);
  }
  {
    test::ServerProcess two(Mpi(2, args), dir / "two.log");
    ASSERT_GT(two.port(), 0) << two.log();
    got = ask(two);
  }
  EXPECT_EQ(got, want);
}

TEST_F(EpCliTest, ErrorsEndEveryRankAndNameTheRank) {
  const RunResult r = RunCommand(Mpi(2, "generate -m /nonexistent --ids 1"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.status, 124) << "hung";
  EXPECT_NE(r.err.find("rank "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("/nonexistent"), std::string::npos) << r.err;
  // A world size that cannot split the experts.
  const test::TempDir dir;
  ASSERT_EQ(RunCommand(One("synth --no-progress --preset tiny --set n_routed_experts=6 --set "
                           "n_group=1 --set topk_group=1 --set topk_method=greedy -o " +
                           (dir / "m")))
                .status,
            0);
  const RunResult split = RunCommand(Mpi(4, "generate -m " + (dir / "m") + " --ids 1"));
  EXPECT_NE(split.status, 0);
  EXPECT_NE(split.status, 124) << "hung";
  EXPECT_NE(split.err.find("6 routed experts cannot be split evenly over 4 ranks"),
            std::string::npos)
      << split.err;
}

}  // namespace
}  // namespace dsv3
