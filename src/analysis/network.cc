#include "analysis/network.h"

#include "core/error.h"

namespace dsv3::analysis {
namespace {

constexpr int64_t kMaxRadix = 4096;  // far above any switch; keeps every count inside int64

void CheckRadix(int64_t radix, bool even) {
  if (radix < 4 || radix > kMaxRadix) Fail("--radix must be in [4, {}], got {}", kMaxRadix, radix);
  if (even && radix % 2 != 0) Fail("--radix must be even for a fat tree, got {}", radix);
}

// Slim Fly's delta for q = 4w + delta; 2 when q has no such form (q = 2 mod 4).
int64_t SlimFlyDelta(int64_t q) {
  switch (q % 4) {
    case 0:
      return 0;
    case 1:
      return 1;
    case 3:
      return -1;
    default:
      return 2;
  }
}

int64_t SlimFlyNetworkRadix(int64_t q) { return (3 * q - SlimFlyDelta(q)) / 2; }
// Endpoints per router: about half the network ports, for full global bandwidth.
int64_t SlimFlyEndpointsPerRouter(int64_t q) { return (SlimFlyNetworkRadix(q) + 1) / 2; }
int64_t SlimFlyPorts(int64_t q) { return SlimFlyNetworkRadix(q) + SlimFlyEndpointsPerRouter(q); }

}  // namespace

bool IsPrimePower(int64_t n) {
  if (n < 2) return false;
  int64_t p = 2;
  while (p * p <= n && n % p != 0) ++p;
  if (n % p != 0) return true;  // n itself is prime
  while (n % p == 0) n /= p;
  return n == 1;
}

Topology FatTree2(int64_t radix) {
  CheckRadix(radix, true);
  const int64_t k = radix;
  Topology t;
  t.key = "ft2";
  t.name = "FT2";
  t.parameters = fmt::format("k = {}", k);
  t.parameters_json = {{"radix", k}};
  t.endpoints = k * (k / 2);  // k leaves, k/2 endpoints each: k^2/2
  t.switches = k + k / 2;     // k leaves + k/2 spines: 3k/2
  t.links = k * (k / 2);      // every leaf to every spine: k^2/2
  t.ports_per_switch = k;
  return t;
}

Topology MultiPlaneFatTree(int64_t radix, int64_t planes) {
  if (planes < 1 || planes > 1024) Fail("--planes must be in [1, 1024], got {}", planes);
  Topology t = FatTree2(radix);
  t.key = "mpft";
  t.name = "MPFT";
  t.parameters = fmt::format("{} planes of FT2, k = {}", planes, radix);
  t.parameters_json = {{"radix", radix}, {"planes", planes}};
  t.endpoints *= planes;
  t.switches *= planes;
  t.links *= planes;
  return t;
}

Topology FatTree3(int64_t radix) {
  CheckRadix(radix, true);
  const int64_t k = radix, h = radix / 2;
  Topology t;
  t.key = "ft3";
  t.name = "FT3";
  t.parameters = fmt::format("k = {}", k);
  t.parameters_json = {{"radix", k}};
  t.endpoints = k * h * h;     // k pods x k/2 edge switches x k/2 endpoints: k^3/4
  t.switches = k * k + h * h;  // k pods x (k/2 edge + k/2 aggregation) + (k/2)^2 core: 5k^2/4
  t.links = 2 * k * h * h;     // edge-aggregation k^3/4 + aggregation-core k^3/4: k^3/2
  t.ports_per_switch = k;
  return t;
}

Topology SlimFly(int64_t radix, int64_t q) {
  CheckRadix(radix, false);
  if (q == 0) {
    for (int64_t c = 3; SlimFlyNetworkRadix(c) <= radix; ++c) {
      if (SlimFlyDelta(c) != 2 && SlimFlyPorts(c) <= radix) q = c;
    }
    if (q == 0) Fail("--radix {} is too small for a Slim Fly", radix);
  }
  if (q < 3 || SlimFlyDelta(q) == 2) {
    Fail(
        "--slim-fly-q must be at least 3 and of the form 4w + delta, delta in {{-1, 0, 1}}, got {}",
        q);
  }
  if (SlimFlyPorts(q) > radix) {
    Fail(
        "Slim Fly q = {} needs {} ports per switch ({} network + {} endpoints), more than the "
        "radix {}",
        q, SlimFlyPorts(q), SlimFlyNetworkRadix(q), SlimFlyEndpointsPerRouter(q), radix);
  }
  const int64_t kn = SlimFlyNetworkRadix(q), p = SlimFlyEndpointsPerRouter(q);
  Topology t;
  t.key = "slim_fly";
  t.name = "Slim Fly";
  t.parameters = fmt::format("q = {}, k' = {}, p = {}", q, kn, p);
  t.parameters_json = {{"q", q}, {"network_radix", kn}, {"endpoints_per_switch", p}};
  t.switches = 2 * q * q;
  t.endpoints = t.switches * p;
  t.links = t.switches * kn / 2;
  t.ports_per_switch = kn + p;
  if (!IsPrimePower(q)) {
    t.notes.push_back(fmt::format(
        "q = {} is not a prime power: the MMS graph needs one, so these counts are the formulas' "
        "values, not a buildable network",
        q));
  }
  return t;
}

Topology Dragonfly(int64_t radix, int64_t p, int64_t a, int64_t h, int64_t g) {
  CheckRadix(radix, false);
  // Balanced dragonfly (Kim et al. 2008): a = 2p = 2h, so each router uses 4p - 1 ports.
  if (p == 0) p = (radix + 1) / 4;
  if (h == 0) h = p;
  if (a == 0) a = 2 * p;
  if (p < 1 || a < 1 || h < 1) {
    Fail("--dragonfly-p, -a and -h must be positive, got {}, {} and {}", p, a, h);
  }
  if (p + (a - 1) + h > radix) {
    Fail(
        "Dragonfly p = {}, a = {}, h = {} needs p + (a - 1) + h = {} ports per switch, more than "
        "the radix {}",
        p, a, h, p + a - 1 + h, radix);
  }
  const int64_t max_groups = a * h + 1;  // a group has a*h global ports, one per other group
  if (g == 0) g = max_groups;
  if (g < 2 || g > max_groups) {
    Fail("--dragonfly-g must be in [2, a * h + 1 = {}], got {}", max_groups, g);
  }
  Topology t;
  t.key = "dragonfly";
  t.name = "Dragonfly";
  t.parameters = fmt::format("p = {}, a = {}, h = {}, g = {}", p, a, h, g);
  t.parameters_json = {{"p", p}, {"a", a}, {"h", h}, {"g", g}};
  t.endpoints = p * a * g;
  t.switches = a * g;
  // Local: all-to-all inside each group. Global: every router's h global ports cabled, so a
  // group pair may get more than one link when g < a * h + 1.
  t.links = g * a * (a - 1) / 2 + g * a * h / 2;
  t.ports_per_switch = p + a - 1 + h;
  if ((g * a * h) % 2 != 0) t.notes.push_back("g * a * h is odd: one global port stays unused");
  return t;
}

std::vector<Topology> AllTopologies(const NetworkOptions& o) {
  return {FatTree2(o.radix), MultiPlaneFatTree(o.radix, o.planes), FatTree3(o.radix),
          SlimFly(o.radix, o.slim_fly_q),
          Dragonfly(o.radix, o.dragonfly_p, o.dragonfly_a, o.dragonfly_h, o.dragonfly_g)};
}

double NetworkCost(const Topology& t, const Prices& p) {
  if (p.switch_usd < 0 || p.link_usd < 0 || p.endpoint_usd < 0) {
    Fail("prices must not be negative, got switch {}, link {}, endpoint {}", p.switch_usd,
         p.link_usd, p.endpoint_usd);
  }
  return static_cast<double>(t.switches) * p.switch_usd +
         static_cast<double>(t.links) * p.link_usd +
         static_cast<double>(t.endpoints) * p.endpoint_usd;
}

}  // namespace dsv3::analysis
