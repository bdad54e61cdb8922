// Cluster network topologies built from switches of a given radix (the co-design paper's Table 3):
// endpoints, switches and switch-to-switch links of two- and three-layer fat trees, multi-plane fat
// trees, Slim Fly and Dragonfly, and their cost from unit prices the user supplies.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/json.h"

namespace dsv3::analysis {

struct Topology {
  std::string key;         // ft2, mpft, ft3, slim_fly, dragonfly
  std::string name;        // "FT2", ...
  std::string parameters;  // readable, e.g. "q = 28, p = 21"
  Json parameters_json;
  int64_t endpoints = 0;
  int64_t switches = 0;
  int64_t links = 0;             // switch-to-switch only (endpoint cables are one per endpoint)
  int64_t ports_per_switch = 0;  // ports each switch uses (<= radix)
  std::vector<std::string> notes;
};

// Non-blocking two-layer fat tree (leaf-spine) of radix-k switches: k leaves with k/2 endpoints
// and k/2 uplinks each, k/2 spines.
Topology FatTree2(int64_t radix);
// `planes` independent two-layer fat trees; each endpoint (GPU + NIC) sits in one plane.
Topology MultiPlaneFatTree(int64_t radix, int64_t planes);
// Three-layer fat tree: k pods of k/2 edge + k/2 aggregation switches, (k/2)^2 core switches.
Topology FatTree3(int64_t radix);
// Slim Fly (MMS graph) with parameter q = 4w + delta, delta in {-1, 0, 1}: 2q^2 routers of
// network radix k' = (3q - delta) / 2, each with p = ceil(k'/2) endpoints. q = 0 picks the largest
// q whose routers fit the radix.
Topology SlimFly(int64_t radix, int64_t q);
// Dragonfly: g groups of a routers, p endpoints and h global links per router, all-to-all inside
// a group, every global port cabled. Zero parameters take the balanced choice for the radix
// (a = 2p = 2h, p + a - 1 + h <= radix) and the largest g = a * h + 1.
Topology Dragonfly(int64_t radix, int64_t p, int64_t a, int64_t h, int64_t g);

struct NetworkOptions {
  int64_t radix = 64;
  int64_t planes = 8;
  int64_t slim_fly_q = 0;                                                      // 0: from the radix
  int64_t dragonfly_p = 0, dragonfly_a = 0, dragonfly_h = 0, dragonfly_g = 0;  // 0: from the radix
};
// FT2, MPFT, FT3, Slim Fly, Dragonfly, in that order.
std::vector<Topology> AllTopologies(const NetworkOptions& o);

// Unit prices in dollars; cost = switches * switch + links * link + endpoints * endpoint (the
// endpoint price covers what each endpoint adds: NIC, its cable and transceivers).
struct Prices {
  double switch_usd = 0, link_usd = 0, endpoint_usd = 0;
  bool any() const { return switch_usd > 0 || link_usd > 0 || endpoint_usd > 0; }
};
double NetworkCost(const Topology& t, const Prices& p);

bool IsPrimePower(int64_t n);

}  // namespace dsv3::analysis
