#include "kernels/targets.h"

#include "hwy/highway.h"

namespace dsv3::kernels {

const char* DispatchedTargetName();  // matmul.cc

namespace {
int64_t g_forced = 0;  // 0: best available

std::vector<int64_t> CpuTargets() {
  hwy::SetSupportedTargetsForTest(0);
  std::vector<int64_t> all = hwy::SupportedAndGeneratedTargets();
  hwy::SetSupportedTargetsForTest(g_forced);
  return all;
}
}  // namespace

std::vector<std::string> AvailableTargets() {
  std::vector<std::string> names;
  for (int64_t t : CpuTargets()) names.push_back(hwy::TargetName(t));
  return names;
}

std::string ActiveTarget() { return DispatchedTargetName(); }

bool ForceTarget(const std::string& name) {
  if (name.empty()) {
    g_forced = 0;
    hwy::SetSupportedTargetsForTest(0);
    return true;
  }
  for (int64_t t : CpuTargets()) {
    if (name == hwy::TargetName(t)) {
      g_forced = t;
      hwy::SetSupportedTargetsForTest(t);
      return true;
    }
  }
  return false;
}

}  // namespace dsv3::kernels
