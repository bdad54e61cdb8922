// Network topologies on small switches, counted by hand, and their cost and bad parameters.
#include "analysis/network.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "tests/test_util.h"

namespace dsv3::analysis {
namespace {

using test::ErrorMessage;

TEST(Network, FatTreesOfEightPortSwitches) {
  // FT2: 8 leaves with 4 endpoints and 4 uplinks each, 4 spines: 32 endpoints, 12 switches,
  // 8 x 4 = 32 links.
  const Topology ft2 = FatTree2(8);
  EXPECT_EQ(ft2.endpoints, 32);
  EXPECT_EQ(ft2.switches, 12);
  EXPECT_EQ(ft2.links, 32);
  // 3 planes of it.
  const Topology mp = MultiPlaneFatTree(8, 3);
  EXPECT_EQ(mp.endpoints, 96);
  EXPECT_EQ(mp.switches, 36);
  EXPECT_EQ(mp.links, 96);
  // FT3: 8 pods of 4 edge + 4 aggregation switches, 16 core: 80 switches; 8 x 4 x 4 = 128
  // endpoints; edge-aggregation 8 pods x 16 + aggregation-core 32 x 4 = 256 links.
  const Topology ft3 = FatTree3(8);
  EXPECT_EQ(ft3.endpoints, 128);
  EXPECT_EQ(ft3.switches, 80);
  EXPECT_EQ(ft3.links, 256);
}

TEST(Network, SlimFlyOfEightPortSwitches) {
  // q = 3 = 4 - 1 (delta -1): k' = (9 + 1) / 2 = 5 network ports, p = 3 endpoints: 8 ports.
  // q = 4 would need 6 + 3 = 9, q = 5 7 + 4 = 11. So q = 3: 18 routers, 54 endpoints,
  // 18 x 5 / 2 = 45 links.
  const Topology sf = SlimFly(8, 0);
  EXPECT_EQ(sf.parameters_json["q"], 3);
  EXPECT_EQ(sf.switches, 18);
  EXPECT_EQ(sf.endpoints, 54);
  EXPECT_EQ(sf.links, 45);
  EXPECT_TRUE(sf.notes.empty());  // 3 is prime
  // q = 5 (delta 1) on 11 ports: k' = 7, p = 4; 50 routers, 200 endpoints, 175 links.
  const Topology sf5 = SlimFly(11, 5);
  EXPECT_EQ(sf5.endpoints, 200);
  EXPECT_EQ(sf5.links, 175);
  EXPECT_FALSE(SlimFly(64, 28).notes.empty());  // 28 is no prime power
}

TEST(Network, DragonflyOfEightPortSwitches) {
  // Balanced for 8 ports: p = h = 2, a = 4 (2 + 3 + 2 = 7 ports); g = a h + 1 = 9 groups.
  // Endpoints 2 x 4 x 9 = 72, switches 36, links 9 x 4 x 3 / 2 local + 9 x 4 x 2 / 2 global
  // = 54 + 36.
  const Topology df = Dragonfly(8, 0, 0, 0, 0);
  EXPECT_EQ(df.parameters_json, Json({{"p", 2}, {"a", 4}, {"h", 2}, {"g", 9}}));
  EXPECT_EQ(df.endpoints, 72);
  EXPECT_EQ(df.switches, 36);
  EXPECT_EQ(df.links, 90);
  EXPECT_EQ(df.ports_per_switch, 7);
  // Odd global port count: g = 3, a = 3, h = 1: 9 global ports, 4 links, one port idle.
  const Topology odd = Dragonfly(8, 1, 3, 1, 3);
  EXPECT_EQ(odd.links, 3 * 3 * 2 / 2 + 4);
  EXPECT_FALSE(odd.notes.empty());
}

TEST(Network, Cost) {
  // 12 switches x 100 + 32 links x 10 + 32 endpoints x 1.
  EXPECT_DOUBLE_EQ(NetworkCost(FatTree2(8), {100, 10, 1}), 1552);
  EXPECT_FALSE(Prices{}.any());
}

TEST(Network, PrimePowers) {
  for (int64_t n : {2, 3, 4, 8, 9, 25, 27, 29, 64, 121}) EXPECT_TRUE(IsPrimePower(n)) << n;
  for (int64_t n : {0, 1, 6, 12, 28, 100}) EXPECT_FALSE(IsPrimePower(n)) << n;
}

TEST(Network, BadParameters) {
  EXPECT_NE(ErrorMessage([] { FatTree2(7); }).find("even"), std::string::npos);
  EXPECT_NE(ErrorMessage([] { FatTree3(-64); }).find("--radix"), std::string::npos);
  EXPECT_NE(ErrorMessage([] { MultiPlaneFatTree(64, 0); }).find("--planes"), std::string::npos);
  EXPECT_NE(ErrorMessage([] { SlimFly(64, 30); }).find("4w + delta"), std::string::npos);
  EXPECT_NE(ErrorMessage([] { SlimFly(64, 29); }).find("more than the radix 64"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([] { Dragonfly(64, 16, 40, 16, 0); }).find("more than the radix"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([] { Dragonfly(64, 0, 0, 0, 600); }).find("--dragonfly-g"),
            std::string::npos);
  EXPECT_NE(ErrorMessage([] {
              NetworkCost(FatTree2(8), {-1, 0, 0});
            }).find("negative"),
            std::string::npos);
}

}  // namespace
}  // namespace dsv3::analysis
